"""Re-evaluate a tracked run from its MLflow record: its config and best checkpoint."""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from nscfate.errors import NscfateError
from nscfate.evaluation.checkpoint import evaluate_checkpoint
from nscfate.evaluation.evaluate import Evaluation


def run_checkpoint(client: MlflowClient, run_id: str, dst: Path) -> Path:
    """Download the run's best checkpoint (``checkpoints/*.ckpt``) into ``dst``."""
    try:
        files = [
            a.path for a in client.list_artifacts(run_id, "checkpoints") if a.path.endswith(".ckpt")
        ]
    except MlflowException as err:
        raise NscfateError(f"run_id={run_id}: {err.message}") from err
    if not files:
        raise NscfateError(f"run {run_id} has no checkpoint artifact (checkpoints/*.ckpt)")
    return Path(client.download_artifacts(run_id, files[0], str(dst)))


def evaluate_run(
    uri: str, run_id: str, model: DictConfig | None = None, data: DictConfig | None = None
) -> tuple[Evaluation, dict[str, float]]:
    """Evaluate run ``run_id``'s best checkpoint; returns the evaluation and the run's own metrics."""
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise NscfateError(f"run_id={run_id} not found in {uri}") from err
    with tempfile.TemporaryDirectory() as tmp:
        evaluation, _ = evaluate_checkpoint(
            run_checkpoint(client, run_id, Path(tmp)), model=model, data=data
        )
    return evaluation, dict(run.data.metrics)
