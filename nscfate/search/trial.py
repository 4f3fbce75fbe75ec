"""One trial: a tracked training run nested under the study's parent run, fed to the pruner per epoch.

The sweeper runs trials through Hydra's launcher, in this process, with its own task function
(``OptunaSweeper._trial_task``), which calls :func:`run_trial`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
from dataclasses import dataclass, field

import optuna
from lightning.pytorch.callbacks import Callback
from mlflow import MlflowClient
from omegaconf import DictConfig
from optuna.trial import TrialState
from optuna_integration import PyTorchLightningPruningCallback

from nscfate.errors import user_error_in
from nscfate.evaluation.evaluate import FIT_METRICS, VAL_F1
from nscfate.redact import redact
from nscfate.search.mirror import child_tags
from nscfate.tracking.run import tracked_train


@dataclass
class TrialContext:
    """What a trial's task needs from the sweep."""

    trial: optuna.Trial
    study: optuna.Study
    parent_run_id: str
    metric: str
    prune: bool
    #: Evaluate the held-out conditions in every trial (``search.evaluate_all``), not only in
    #: those that could be promoted.
    evaluate_all: bool = False


@dataclass
class TrialOutcome:
    """How a trial ended: COMPLETE with a value, PRUNED, or FAIL with an error."""

    state: TrialState
    value: float | None = None
    error: str | None = None
    #: What a finished run warned about (``nscfate.evaluation.health``): code -> message.
    warnings: dict[str, str] = field(default_factory=dict)


class EpochCounter(Callback):
    """Record on the trial how many epochs it trained (pruned trials stop early)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.trial.set_user_attr("epochs", trainer.current_epoch + 1)


def run_trial(cfg: DictConfig, ctx: TrialContext) -> TrialOutcome:
    """Train and track one trial; never raises for a failing trial (the sweep goes on).

    A failure's error travels in the outcome; the sweeper stores it on the trial. A trial that
    cannot be the study's best (:func:`could_be_best`; known after fitting when the study's
    metric is a fit metric) skips what only a promoted model needs: the held-out conditions'
    evaluation (unless ``search.evaluate_all``) and the pyfunc model (built from the checkpoint if
    the run is promoted after all).
    """
    trial = ctx.trial
    callbacks: list[Callback] = [EpochCounter(trial)]
    if ctx.prune:
        monitor = ctx.metric if ctx.metric in FIT_METRICS else VAL_F1
        callbacks.append(PyTorchLightningPruningCallback(trial, monitor=monitor))
    run_ids: list[str] = []

    def promotable(metrics: dict[str, float]) -> bool:
        return could_be_best(ctx.study, trial, metrics.get(ctx.metric))

    def started(run_id: str) -> None:
        run_ids.append(run_id)
        trial.set_user_attr("mlflow_run_id", run_id)
        MlflowClient(cfg.tracking.uri).log_batch(
            run_id, params=[optuna_param(k, v) for k, v in trial.params.items()]
        )

    try:
        result = tracked_train(
            cfg,
            tags=child_tags(ctx.parent_run_id, ctx.study, trial),
            callbacks=callbacks,
            on_run_started=started,
            interruptions=(optuna.TrialPruned,),
            promotable=promotable,
            independent=lambda fit: ctx.evaluate_all or ctx.metric not in fit or promotable(fit),
        )
    except optuna.TrialPruned:
        if run_ids:
            MlflowClient(cfg.tracking.uri).set_tag(run_ids[0], "optuna.state", "PRUNED")
        return TrialOutcome(TrialState.PRUNED)
    except Exception as err:  # a failing trial is recorded, the sweep goes on
        error = redact(str(user_error_in(err) or f"{type(err).__name__}: {err}"))
        return TrialOutcome(TrialState.FAIL, error=error)
    value = result.metrics.get(ctx.metric)
    if value is None or not math.isfinite(value):
        error = f"objective {ctx.metric} is {value} (not a finite number)"
        client = MlflowClient(cfg.tracking.uri)
        client.set_tag(result.run_id, "nscfate.failed_reason", error)
        client.set_terminated(result.run_id, "FAILED")
        return TrialOutcome(TrialState.FAIL, error=error)
    warnings = {w.code: w.message for w in result.warnings}
    return TrialOutcome(TrialState.COMPLETE, value=float(value), warnings=warnings)


def could_be_best(study: optuna.Study, trial: optuna.Trial, value: float | None) -> bool:
    """Whether a trial finishing with ``value`` may be (or become) the study's best trial, the one
    ``search.register_best`` and ``nscfate-promote search.study=...`` promote: only if no complete
    trial so far is better (the best only improves; a tie counts, since which of two equal trials
    a storage calls best is not defined)."""
    if value is None or not math.isfinite(value):
        return False
    done = [
        t.value
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.number != trial.number and t.value is not None and math.isfinite(t.value)
    ]
    if not done:
        return True
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return value >= max(done) if maximize else value <= min(done)


def release_memory() -> None:
    """Give back what a finished trial held before the next one starts.

    A trial's trainer, module, datamodule and loaders point at each other, so they are freed by
    Python's cycle collector, not when the trial returns; with the millions of long-lived objects
    a worker has imported, a full collection may not come for many trials, and meanwhile their
    tensors (and persistent loader workers) stay alive. So collect now, then ask glibc to return
    freed heap pages to the system (``malloc_trim``; nothing elsewhere).
    """
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()


def optuna_param(name: str, value: object):
    """A trial parameter as an MLflow param ``trial.<name>``."""
    from mlflow.entities import Param

    return Param(f"trial.{name}", str(value))
