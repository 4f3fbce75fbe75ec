"""Fetch what a tracked run left in MLflow: its best checkpoint and its logged metrics."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from nscfate.errors import NscfateError


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


def fetch_run(uri: str, run_id: str, dst: Path) -> tuple[Path, dict[str, float]]:
    """The run's best checkpoint (downloaded into ``dst``) and the metrics it logged."""
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise NscfateError(f"run_id={run_id} not found in {uri}") from err
    return run_checkpoint(client, run_id, dst), dict(run.data.metrics)
