"""MLflow mirrors a study: one parent run per study, a nested child run per trial, results on the parent."""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

import mlflow
import optuna
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from nscfate.redact import redact
from nscfate.search.storage import standing_trials

ROLE, STUDY = "nscfate.role", "nscfate.study"
log = logging.getLogger(__name__)


def find_or_create_parent(
    client: MlflowClient, experiment_id: str, study: optuna.Study, storage: str
) -> str:
    """The study's parent run: remembered on the study, else found by tag, else created.

    Call under the storage lock so concurrent workers agree on one parent.
    """
    remembered = study.user_attrs.get("mlflow_parent_run_id")
    if remembered and _exists(client, remembered):
        return remembered
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{STUDY}` = '{study.study_name}' and tags.`{ROLE}` = 'study'",
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
    else:
        run = client.create_run(
            experiment_id,
            run_name=study.study_name,
            tags={
                ROLE: "study",
                STUDY: study.study_name,
                "nscfate.optuna_storage": redact(storage),
            },
        )
        run_id = run.info.run_id
    study.set_user_attr("mlflow_parent_run_id", run_id)
    return run_id


def _exists(client: MlflowClient, run_id: str) -> bool:
    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except mlflow.exceptions.MlflowException:
        return False


def end_dead_runs(client: MlflowClient, study: optuna.Study, numbers: list[int]) -> None:
    """End the MLflow runs of trials whose worker died (they would stay RUNNING forever) KILLED."""
    for trial in study.get_trials(deepcopy=False):
        run_id = trial.user_attrs.get("mlflow_run_id")
        if trial.number not in numbers or not run_id:
            continue
        try:
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_tag(run_id, "nscfate.interrupted", "its worker died")
                client.set_terminated(run_id, "KILLED")
        except mlflow.exceptions.MlflowException as err:  # the run may never have been created
            log.warning("could not end the run %s of dead trial %d: %s", run_id, trial.number, err)


def child_tags(parent_run_id: str, study: optuna.Study, trial: optuna.Trial) -> dict[str, str]:
    """Tags that nest a trial's run under the study's parent run and identify the trial."""
    return {
        "mlflow.parentRunId": parent_run_id,
        STUDY: study.study_name,
        ROLE: "trial",
        "nscfate.trial_number": str(trial.number),
        "mlflow.runName": f"trial-{trial.number}",
    }


def study_summary(study: optuna.Study) -> dict:
    """Best trial, its parameters and MLflow run, and the trial counts by state."""
    trials = standing_trials(study)
    counts = {
        s.name.lower(): 0
        for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    }
    for t in trials:
        if t.state.name.lower() in counts:
            counts[t.state.name.lower()] += 1
    summary: dict = {
        "study": study.study_name,
        "direction": study.direction.name.lower(),
        "trials": counts,
        # every epoch spent, a dead worker's included
        "epochs_trained": int(
            sum(t.user_attrs.get("epochs", 0) for t in study.get_trials(deepcopy=False))
        ),
        # trials whose model learned nothing useful (one class, or chance): nscfate.evaluation.health
        "warned": sum(bool(t.user_attrs.get("warnings")) for t in trials),
    }
    done = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)
    ]
    if done:
        best = study.best_trial
        summary["best"] = {
            "number": best.number,
            "value": float(best.value),
            "params": dict(best.params),
            "mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
        }
        if best.user_attrs.get("warnings"):
            summary["best"]["warnings"] = best.user_attrs["warnings"]
    return summary


def finish_parent(
    client: MlflowClient, parent_run_id: str, study: optuna.Study, summary: dict, complete: bool
) -> None:
    """Log the best value and params, the Optuna plots and the summary on the parent run."""
    if "best" in summary:
        client.log_metric(parent_run_id, "best_value", summary["best"]["value"])
        for k, v in summary["best"]["params"].items():
            client.set_tag(parent_run_id, f"best.{k}", str(v))
        client.set_tag(parent_run_id, "best.trial_number", str(summary["best"]["number"]))
        if summary["best"]["mlflow_run_id"]:
            client.set_tag(parent_run_id, "best.mlflow_run_id", summary["best"]["mlflow_run_id"])
    for state, n in summary["trials"].items():
        client.log_metric(parent_run_id, f"trials_{state}", n)
    client.log_metric(parent_run_id, "epochs_trained", summary["epochs_trained"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "sweep_summary.yaml").write_text(yaml.safe_dump(summary, sort_keys=False))
        client.log_artifact(parent_run_id, str(tmp / "sweep_summary.yaml"))
        for path in _plots(study, tmp).values():
            client.log_artifact(parent_run_id, str(path), "plots")
    if complete:
        client.set_terminated(parent_run_id, "FINISHED")
    else:
        client.update_run(parent_run_id, status="RUNNING")


def _plots(study: optuna.Study, tmp: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out = {}
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    makers = {"optimization_history": ovm.plot_optimization_history}
    if len(complete) >= 2 and len({tuple(sorted(t.params.items())) for t in complete}) >= 2:
        makers["param_importances"] = ovm.plot_param_importances
    for name, make in makers.items():
        try:
            ax = make(study)
        except (ValueError, RuntimeError):  # e.g. importances of a single-valued space
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(7, 4.5)
        fig.tight_layout()
        out[name] = tmp / f"{name}.png"
        fig.savefig(out[name], dpi=110)
        plt.close(fig)
    return out
