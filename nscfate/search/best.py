"""The best trial of a study, as the MLflow run that trained it."""

from __future__ import annotations

import optuna

from nscfate.errors import NscfateError
from nscfate.search.storage import open_storage


def best_trial_run(study_name: str, storage_url: str) -> tuple[str, str]:
    """(MLflow run id, description) of the best complete trial of ``study_name``."""
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
    except KeyError as err:
        raise NscfateError(f"search.study={study_name!r} not found in {storage_url}") from err
    try:
        best = study.best_trial
    except ValueError as err:
        raise NscfateError(f"study {study_name!r} has no complete trial yet") from err
    run_id = best.user_attrs.get("mlflow_run_id")
    if not run_id:
        raise NscfateError(
            f"trial {best.number} of study {study_name!r} has no MLflow run (mlflow_run_id)"
        )
    return run_id, f"best trial {best.number} of study {study_name} ({best.value:.4f})"
