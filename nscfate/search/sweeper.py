"""nscfate's Optuna sweeper: ``nscfate-train -m search=<space> [overrides in Hydra's sweep grammar]``.

Each worker process loops: take a trial slot under the storage lock (so all workers together run
exactly ``search.n_trials``), ask Optuna for parameters, run the trial through Hydra's launcher in this
process (a tracked training run nested under the study's MLflow parent run, reporting every epoch to
the pruner), tell Optuna how it ended. Rerunning the same command resumes the study; a failing trial
is recorded and the sweep goes on until ``search.max_failure_rate`` is passed.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import optuna
import yaml
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.types import HydraContext, TaskFunction
from mlflow import MlflowClient
from omegaconf import DictConfig
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import TrialState

from nscfate.errors import NscfateError
from nscfate.files import atomic_write
from nscfate.redact import redact, redact_hydra_outputs, redact_logs
from nscfate.search import trial as trials
from nscfate.search.mirror import end_dead_runs, find_or_create_parent, finish_parent, study_summary
from nscfate.search.space import SearchSpace, parse_space
from nscfate.search.storage import (
    claim,
    counted_trials,
    has_lock,
    mark_started,
    recover_dead_trials,
    standing_trials,
    storage_lock,
    watchable_running_trials,
)
from nscfate.search.study import ExhaustibleGridSampler, load_study, study_name
from nscfate.search.workers import (
    check_workers,
    run_slurm_workers,
    run_workers,
)
from nscfate.tracking.connection import connect
from nscfate.tracking.registry import candidate_from_run, register
from nscfate.training.train import check_objective

log = logging.getLogger(__name__)
SUMMARY_FILE = "sweep_summary.yaml"
#: What ``_next_trial`` returns when the study is full but trials still run in other workers.
WAIT = object()
#: How often a worker that has nothing left to take looks whether the trials running elsewhere
#: ended (or died and need a retry): it leaves about this long after the study's last trial.
WAIT_POLL_SECONDS = 1.0


class OptunaSweeper:
    """The implementation behind the Hydra sweeper plugin ``hydra/sweeper=nscfate_optuna``."""

    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None
        self._trial: trials.TrialContext | None = None  # the trial the launcher is running

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """The launcher runs this sweeper's own task for every trial (train and track it, report
        to Optuna); the command's task function is for single runs."""
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=self._trial_task, config=config
        )

    def _trial_task(self, cfg: DictConfig) -> trials.TrialOutcome:
        """What the launcher runs for one trial, on the config composed with its overrides."""
        if self._trial is None:
            raise RuntimeError("the launcher ran a task outside a trial")
        redact_hydra_outputs()  # the job's .hydra/*.yaml record the command line, a password too
        return trials.run_trial(cfg, self._trial)

    def sweep(self, arguments: list[str]) -> dict:
        """Run this worker's share of the study; returns (and writes) the study summary."""
        redact_logs()  # Hydra's launcher logs each job's overrides, a tracking.uri included
        search = self._search_config()
        space = parse_space([*(f"{k}={v}" for k, v in (search.params or {}).items()), *arguments])
        self._validate(space)
        name = study_name(search, space, search.metric)
        # Workers starting together on fresh storages would race to create the same tables
        # (creating an MLflow client migrates its database), so all of that happens under the lock.
        with storage_lock(search.storage, name):
            study = load_study(search, space, name, max_epochs=self.config.trainer.max_epochs)
            mark_started(search.storage)  # now a lost connection is an outage to wait out
            experiment_id = connect(
                self.config.tracking.uri,
                self.config.tracking.experiment,
                self.config.tracking.get("artifact_location"),
            )
            client = MlflowClient(self.config.tracking.uri)
            parent = find_or_create_parent(client, experiment_id, study, search.storage)
        client.update_run(parent, status="RUNNING")
        log.info(
            "study %r in %s: %d of %d trials done; MLflow parent run %s",
            name,
            search.storage,
            counted_trials(study),
            search.n_trials,
            parent,
        )
        if int(search.get("workers", 1)) > 1 or search.get("backend", "local") == "slurm":
            self._run_workers(study, search)
        else:
            self._run_trials(study, space, search, parent, client)
        return self._finish(study, search, client, parent)

    def _run_workers(self, study: optuna.Study, search: DictConfig) -> None:
        """Run the study by ``search.workers`` workers, each this command as one worker: local
        processes, or a SLURM job array (``search.backend=slurm``, ``search.sbatch`` options); this
        process waits for them. A worker that died is an error only if the others could not finish
        the study.

        This process trains in none of them, on a CPU too: beside the one worker it started, it
        trained 40 % slower per epoch than that worker did (the same work, both busy all the time;
        cause not found), while two started workers train as fast as one alone
        (``benchmarks/sweep_workers.py``). With GPUs a process must also be told its GPU before it
        touches CUDA."""
        n, sweep_dir = int(search.workers), Path(self.config.hydra.sweep.dir)
        if search.get("backend", "local") == "slurm":
            options = [str(o) for o in search.get("sbatch") or []]
            failed = run_slurm_workers(n, sweep_dir, f"nscfate-{study.study_name}", options)
        else:
            failed = run_workers(n, sweep_dir)
        if not failed:
            return
        done = counted_trials(study) >= search.n_trials and not watchable_running_trials(study)
        message = f"search.workers={n}: {', '.join(failed)} failed"
        if not done:
            raise NscfateError(f"{message}; rerun the same command to resume the study")
        log.warning("%s; the other workers finished the study", message)

    def _search_config(self) -> DictConfig:
        search = self.config.get("search")
        if search is None:
            raise NscfateError(
                "a sweep needs a search config: add search=default (or search=architecture, ...)"
            )
        check_objective(search.metric)
        if int(search.n_trials) < 1:
            raise NscfateError(f"search.n_trials={search.n_trials}: expected at least 1")
        check_workers(search.get("workers", 1), search.storage, str(search.get("backend", "local")))
        if not 0 <= float(search.max_failure_rate) <= 1:
            raise NscfateError(
                f"search.max_failure_rate={search.max_failure_rate}: expected a value in [0, 1]"
            )
        return search

    def _validate(self, space: SearchSpace) -> None:
        """Compose a config for every choice (and each interval's ends) before any trial starts."""
        if not self.config.tracking.get("enabled", True):
            raise NscfateError(
                "tracking=none: a sweep records every trial as an MLflow run; use tracking=mlflow"
            )
        loader = self.hydra_context.config_loader
        probes = [space.fixed]
        for key, dist in space.distributions.items():
            values = getattr(dist, "choices", None) or (dist.low, dist.high)
            probes += [
                [*space.fixed, *space.overrides({key: v})[len(space.fixed) :]] for v in values
            ]
        for overrides in probes:
            try:
                loader.load_sweep_config(self.config, list(overrides))
            except Exception as err:
                first = str(err).strip().splitlines()[0]
                raise NscfateError(f"search space {' '.join(overrides)}: {first}") from err

    def _run_trials(
        self,
        study: optuna.Study,
        space: SearchSpace,
        search: DictConfig,
        parent: str,
        client: MlflowClient,
    ) -> None:
        """Take trials until the study has ``n_trials`` and none runs anywhere; each time, first
        recover the trials of workers that died (they are re-queued and this worker may take them)."""
        waiting = False
        while True:
            with storage_lock(search.storage, study.study_name):
                recovered = recover_dead_trials(study, locked=has_lock(search.storage))
                end_dead_runs(client, study, recovered)
                trial = self._next_trial(study, space, search)
            if recovered:
                log.warning("re-queued trials %s left running by a dead worker", recovered)
            if trial is None:
                return
            if trial is WAIT:  # the total is reached, but trials still run elsewhere: they may die
                if not waiting:
                    log.info("waiting for trials still running in other workers")
                waiting = True
                time.sleep(min(WAIT_POLL_SECONDS, float(search.get("heartbeat_interval", 10))))
                continue
            waiting = False
            outcome = self._launch(trial, study, space, search, parent)
            self._tell(study, trial, outcome, search.metric)
            self._check_failures(study, search)

    @staticmethod
    def _next_trial(study: optuna.Study, space: SearchSpace, search: DictConfig) -> Any:
        """A new claimed trial, WAIT, or None when this worker is done. Call under the lock."""
        if counted_trials(study) >= search.n_trials:
            return WAIT if watchable_running_trials(study) else None
        if isinstance(study.sampler, ExhaustibleGridSampler) and study.sampler.exhausted(study):
            log.info("the grid is exhausted before search.n_trials=%d", search.n_trials)
            return None
        # Claimed under the lock, so recovery never mistakes a starting trial for a dead one.
        trial = study.ask(space.distributions)
        claim(trial)
        return trial

    def _launch(
        self,
        trial: optuna.Trial,
        study: optuna.Study,
        space: SearchSpace,
        search: DictConfig,
        parent: str,
    ) -> trials.TrialOutcome:
        overrides = space.overrides(trial.params)
        log.info("trial %d: %s", trial.number, " ".join(overrides))
        self._trial = trials.TrialContext(
            trial,
            study,
            parent,
            search.metric,
            prune=search.pruner != "none",
            evaluate_all=bool(search.get("evaluate_all", False)),
        )
        try:
            with get_heartbeat_thread(trial._trial_id, study._storage):
                ret = self.launcher.launch([overrides], initial_job_idx=trial.number)[0]
        finally:
            self._trial = None
            trials.release_memory()  # nothing of this trial may outlive it (issue 13)
        if ret.status == JobStatus.COMPLETED and isinstance(ret.return_value, trials.TrialOutcome):
            return ret.return_value
        error = (
            ret._return_value if ret.status == JobStatus.FAILED else "the task returned no outcome"
        )
        return trials.TrialOutcome(TrialState.FAIL, error=f"{type(error).__name__}: {error}")

    @staticmethod
    def _tell(
        study: optuna.Study, trial: optuna.Trial, outcome: trials.TrialOutcome, metric: str
    ) -> None:
        # Another worker may have found our heartbeat stale and re-queued the trial meanwhile.
        reaped = study._storage.get_trial(trial._trial_id).state.is_finished()
        try:
            if not reaped:
                OptunaSweeper._record(study, trial, outcome, metric)
                return
        except UpdateFinishedTrialError:
            pass
        log.warning(
            "trial %d was failed by another worker meanwhile (its heartbeat went stale); this "
            "result is dropped, its retry counts instead",
            trial.number,
        )

    @staticmethod
    def _record(
        study: optuna.Study, trial: optuna.Trial, outcome: trials.TrialOutcome, metric: str
    ) -> None:
        if outcome.state == TrialState.FAIL:
            trial.set_user_attr("error", redact(outcome.error or "")[:1000])
            log.warning("trial %d failed: %s", trial.number, outcome.error)
        if outcome.warnings:
            trial.set_user_attr("warnings", outcome.warnings)
            log.warning("trial %d: %s", trial.number, "; ".join(outcome.warnings.values()))
        if outcome.state == TrialState.COMPLETE:
            study.tell(trial, outcome.value, skip_if_finished=True)
            log.info("trial %d: %s = %.4f", trial.number, metric, outcome.value)
        else:
            study.tell(trial, state=outcome.state, skip_if_finished=True)

    @staticmethod
    def _check_failures(study: optuna.Study, search: DictConfig) -> None:
        # A dead worker's trial is retried, not a failure.
        finished = [t for t in standing_trials(study) if t.state.is_finished()]
        failed = [t for t in finished if t.state == TrialState.FAIL]
        if (
            finished
            and len(failed) / len(finished) > float(search.max_failure_rate)
            and len(failed) >= 2
        ):
            raise NscfateError(
                f"{len(failed)} of {len(finished)} trials failed, more than search.max_failure_rate="
                f"{search.max_failure_rate}; last error: {failed[-1].user_attrs.get('error')}"
            )

    def _finish(
        self, study: optuna.Study, search: DictConfig, client: MlflowClient, parent: str
    ) -> dict:
        summary = study_summary(study)
        summary |= {
            "storage": redact(search.storage),
            "metric": search.metric,
            "n_trials": int(search.n_trials),
            "mlflow_parent_run_id": parent,
        }
        complete = counted_trials(study) >= search.n_trials and summary["trials"]["running"] == 0
        if (
            complete
            and search.get("register_best")
            and summary.get("best", {}).get("mlflow_run_id")
        ):
            version = register(
                client,
                search.model_name,
                candidate_from_run(
                    client,
                    summary["best"]["mlflow_run_id"],
                    f"best trial {summary['best']['number']} of {study.study_name}",
                ),
            )
            summary["registered"] = {
                "model": search.model_name,
                "version": version.version,
                "alias": "challenger",
            }
        finish_parent(client, parent, study, summary, complete)
        out = Path(self.config.hydra.sweep.dir) / SUMMARY_FILE
        with atomic_write(out) as tmp:
            tmp.write_text(yaml.safe_dump(summary, sort_keys=False))
        print_sweep_summary(summary, out)
        return summary


def print_sweep_summary(summary: dict, path: Path) -> None:
    """The sweep's outcome on the terminal."""
    from rich.console import Console

    console = Console(width=110)
    t = summary["trials"]
    console.print(
        f"study {summary['study']} ({summary['storage']}): {t['complete']} complete, "
        f"{t['pruned']} pruned, {t['fail']} failed, {t['running']} running; "
        f"{summary['epochs_trained']} epochs trained"
    )
    if summary.get("warned"):
        console.print(
            f"[red]{summary['warned']} trial(s) learned nothing useful (one class or chance): "
            "trial user attribute 'warnings', MLflow tag nscfate.warnings[/red]"
        )
    if "best" in summary:
        best = summary["best"]
        params = ", ".join(f"{k}={v}" for k, v in best["params"].items())
        value = best["value"]
        shown = f"{value:.4f}" if math.isfinite(value) else "nan"
        console.print(f"best trial {best['number']}: {summary['metric']} = {shown}")
        console.print(f"  params: {params}")
        for message in best.get("warnings", {}).values():
            console.print(f"  [red]WARNING: {message}[/red]")
        console.print(
            f"  MLflow run: {best['mlflow_run_id']} (parent {summary['mlflow_parent_run_id']})"
        )
    if "registered" in summary:
        reg = summary["registered"]
        console.print(f"registered as {reg['model']} v{reg['version']} (alias {reg['alias']})")
    console.print(f"summary written to {path}")
    console.print(f"look at the study: optuna-dashboard {summary['storage']}")
