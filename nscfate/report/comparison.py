"""Sections that compare runs: the trials of a sweep's study or the runs of an MLflow experiment
(comparison tables by architecture, augmentation or any swept setting), and the study's
optimisation history and parameter importances (the plots its parent run logged)."""

from __future__ import annotations

import math

import optuna
import pandas as pd
from mlflow import MlflowClient
from optuna.trial import TrialState

from nscfate.errors import NscfateError
from nscfate.evaluation.evaluate import (
    FRAC_MAE,
    ORACLE_F1,
    TEST_ACC,
    TEST_ECE,
    TEST_F1,
    TEST_PREFIX,
    day_metric,
)
from nscfate.report import html as h
from nscfate.report.sources import RunData, get_run
from nscfate.search.storage import open_storage

#: Metrics shown per compared run (when logged).
COMPARED = (
    TEST_F1,
    TEST_ACC,
    *(day_metric(TEST_PREFIX, day) for day in (1, 3, 5, 7)),
    TEST_ECE,
    FRAC_MAE,
    ORACLE_F1,
)
#: A setting with at most this many distinct values gets its own comparison table.
MAX_GROUPS = 12


def load_study(name: str, storage: str) -> optuna.Study:
    """The study ``name`` in ``storage`` (NscfateError naming it when absent)."""
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError as err:
        raise NscfateError(f"search.study={name!r} not found in {storage}") from err


def trial_table(client: MlflowClient, study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, objective, params, MLflow run and its test metrics."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        run_id = t.user_attrs.get("mlflow_run_id", "")
        metrics = client.get_run(run_id).data.metrics if run_id else {}
        rows.append(
            {"trial": t.number, "state": t.state.name, "objective": _num(t.value)}
            | {k: str(v) for k, v in t.params.items()}
            | {m: _num(metrics.get(m)) for m in COMPARED if m in metrics}
            | {"mlflow run": run_id}
        )
    return pd.DataFrame(rows)


def run_table(runs: list[RunData], settings: list[str]) -> pd.DataFrame:
    """One row per run of an experiment: name, the chosen settings, its test metrics, id."""
    return pd.DataFrame(
        [
            {"run": r.name, "objective": _num(r.metrics.get(TEST_F1))}
            | {s: r.params.get(s, "") for s in settings}
            | {m: _num(r.metrics.get(m)) for m in COMPARED if m in r.metrics}
            | {"mlflow run": r.run_id}
            for r in runs
        ]
    )


def grouped(table: pd.DataFrame, setting: str) -> pd.DataFrame:
    """Per value of ``setting``: number of runs, best and mean objective, best test macro-F1."""
    done = table[table["objective"].notna()]
    agg = {
        "runs": ("objective", "size"),
        "best objective": ("objective", "max"),
        "mean objective": ("objective", "mean"),
    }
    if TEST_F1 in done:
        agg["best test macro-F1"] = (TEST_F1, "max")
    out = done.groupby(setting).agg(**agg).reset_index()
    return out.sort_values("best objective", ascending=False)


def comparison_section(table: pd.DataFrame, settings: list[str], what: str) -> h.Section:
    """The comparison tables: one per compared setting, then every run."""
    body = h.paragraph(
        f"{what}; objective: the value each run was ranked by. Architecture and "
        "augmentation comparisons are the tables for model and augmentation."
    )
    for s in settings:
        if s in table and 1 < table[s].nunique() <= MAX_GROUPS:
            body += f"<h3>by {s}</h3>" + h.frame(grouped(table, s))
    body += "<h3>every run</h3>" + h.frame(table.sort_values("objective", ascending=False))
    return h.Section(
        "comparison", "Comparison of runs: architectures, augmentations, settings", body
    )


def study_plots(parent: RunData | None) -> list[h.Section]:
    """The optimisation history and parameter importances the study's parent run logged."""
    sections = []
    for sid, title, name in (
        ("history", "Optimisation history", "optimization_history"),
        ("importances", "Parameter importances", "param_importances"),
    ):
        png = parent.images.get(f"plots/{name}.png") if parent else None
        body = (
            h.image(png, title.lower())
            if png
            else h.paragraph(
                f"The study's parent run logged no {name}.png (importances need two complete trials "
                "with different parameters).",
                note=True,
            )
        )
        sections.append(h.Section(sid, title, body))
    return sections


def parent_run(client: MlflowClient, study: optuna.Study) -> RunData | None:
    """The study's MLflow parent run (with its plots), if it has one."""
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    return get_run(client, run_id) if run_id else None


def best_trial_run(study: optuna.Study) -> str:
    """The MLflow run id of the study's best complete trial."""
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value)
    ]
    if not done:
        raise NscfateError(f"search.study={study.study_name!r} has no complete trial yet")
    run_id = study.best_trial.user_attrs.get("mlflow_run_id")
    if not run_id:
        raise NscfateError(f"the best trial of {study.study_name!r} has no MLflow run")
    return run_id


def _num(value: float | None) -> float:
    return float("nan") if value is None else float(value)
