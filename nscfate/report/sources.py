"""What a report reads: a run's metrics, tags, params, logged plots and prediction tables (MLflow),
and a study's trials (Optuna). Nothing is recomputed here that a run already logged."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from nscfate.errors import NscfateError
from nscfate.evaluation.evaluate import TEST_F1

#: Artifact folders a report reads (what nscfate.tracking.record and the CAM gallery log).
FOLDERS = ("plots", "predictions", "cam")


@dataclass
class RunData:
    """One MLflow run as a report sees it."""

    run_id: str
    name: str
    experiment: str
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    images: dict[str, bytes] = field(default_factory=dict)  # artifact path -> PNG bytes
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # file stem -> table


def get_run(client: MlflowClient, run_id: str) -> RunData:
    """The run's metadata and every PNG and CSV it logged under ``plots/``, ``predictions/``,
    ``cam/`` (NscfateError naming ``run_id`` when there is no such run)."""
    try:
        run = client.get_run(run_id)
        experiment = client.get_experiment(run.info.experiment_id).name
    except MlflowException as err:
        raise NscfateError(f"run_id={run_id}: no such MLflow run ({err.message})") from err
    data = RunData(
        run_id,
        run.info.run_name or run_id,
        experiment,
        run.info.status,
        dict(run.data.params),
        dict(run.data.tags),
        dict(run.data.metrics),
    )
    with tempfile.TemporaryDirectory() as tmp:
        for path in _artifact_files(client, run_id):
            local = Path(client.download_artifacts(run_id, path, tmp))
            if path.endswith(".png"):
                data.images[path] = local.read_bytes()
            elif path.endswith(".csv"):
                data.tables[Path(path).stem] = pd.read_csv(local, keep_default_na=False)
    return data


def _artifact_files(client: MlflowClient, run_id: str) -> list[str]:
    """Paths of the PNG and CSV files under the report's folders of a run."""
    found, stack = [], list(FOLDERS)
    while stack:
        for item in client.list_artifacts(run_id, stack.pop()):
            if item.is_dir:
                stack.append(item.path)
            elif item.path.endswith((".png", ".csv")):
                found.append(item.path)
    return sorted(found)


def experiment_runs(client: MlflowClient, name: str) -> list[RunData]:
    """The finished training runs of an MLflow experiment (sweep parents left out), best first by
    ``test/f1_macro``; metadata only."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise NscfateError(f"report.experiment={name!r}: no such MLflow experiment")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        order_by=["metrics.`test/f1_macro` DESC"],
    )
    out = [
        RunData(
            r.info.run_id,
            r.info.run_name or r.info.run_id,
            name,
            r.info.status,
            dict(r.data.params),
            dict(r.data.tags),
            dict(r.data.metrics),
        )
        for r in runs
        if r.data.tags.get("nscfate.role") != "study" and TEST_F1 in r.data.metrics
    ]
    if not out:
        raise NscfateError(f"report.experiment={name!r} has no finished run with test metrics")
    return out
