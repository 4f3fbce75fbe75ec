"""A tracked training run: ``train(cfg)`` inside an MLflow run (per-epoch metrics through Lightning's
MLFlowLogger; everything else as ``nscfate.tracking.record`` logs it). A run that raises ends
FAILED. Only rank 0 talks to MLflow. ``tracking=none`` trains and evaluates without a run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlflow
import pandas as pd
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from nscfate.errors import NscfateError
from nscfate.evaluation.evaluate import oracle_metrics, oracle_scores
from nscfate.evaluation.health import RunWarning
from nscfate.redact import redact
from nscfate.tracking.connection import connect
from nscfate.tracking.pyfunc import warm_model_logging
from nscfate.tracking.record import git_tags, log_config, log_results, log_warnings
from nscfate.training.train import prepare, train

log = logging.getLogger(__name__)


@dataclass
class TrackedRun:
    """The outcome of a tracked run: its objective, all metrics, the MLflow run id and the tables
    the terminal summary shows."""

    objective: float
    metrics: dict[str, float]
    run_id: str | None
    warnings: list[RunWarning] = field(default_factory=list)
    accuracy_by_day: dict[float, float] = field(default_factory=dict)
    oracle_by_day: dict[float, float] = field(default_factory=dict)
    fractions: pd.DataFrame = field(default_factory=pd.DataFrame)


def tracked_train(
    cfg: DictConfig,
    tags: Mapping[str, str] | None = None,
    callbacks: Sequence[Callback] = (),
    on_run_started: Callable[[str], None] | None = None,
    interruptions: tuple[type[BaseException], ...] = (),
    promotable: Callable[[dict[str, float]], bool] | None = None,
    independent: Callable[[dict[str, float]], bool] | None = None,
) -> TrackedRun:
    """Run ``train(cfg)`` inside a new MLflow run.

    ``tags`` may nest it (``mlflow.parentRunId``); ``on_run_started`` learns the run id as soon as
    it exists; an exception of a type in ``interruptions`` (a pruned trial) ends the run KILLED and
    tagged ``nscfate.interrupted`` instead of FAILED, then propagates. ``promotable`` (a sweep
    trial) says from the run's metrics whether it could ever be promoted: when not, its pyfunc
    model is left to be built from its checkpoint if it is asked for (``tracking.pyfunc``);
    ``independent`` says from the fit metrics whether to evaluate the held-out conditions.
    """
    cfg, datamodule = prepare(cfg)
    if not cfg.tracking.get("enabled", True):  # tracking=none: the same run, nothing logged
        metrics, objects = train(cfg, callbacks=callbacks, datamodule=datamodule)
        return _result(cfg, metrics, objects, None, _add_oracle(metrics, objects))
    if rank_zero_only.rank != 0:  # DDP workers train but never log
        metrics, _ = train(cfg, callbacks=callbacks, datamodule=datamodule)
        return TrackedRun(float("nan"), metrics, None)
    if cfg.tracking.get("log_model", True):
        warm_model_logging()
    experiment_id = connect(
        cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.artifact_location
    )
    run_tags = {**(cfg.tracking.get("tags") or {}), **(tags or {}), **git_tags()}
    run = mlflow.start_run(
        experiment_id=experiment_id, run_name=cfg.tracking.get("run_name"), tags=run_tags
    )
    with run:
        run_id = run.info.run_id
        if on_run_started:
            on_run_started(run_id)
        log.info(
            "MLflow run %s in experiment %s (%s)",
            run_id,
            cfg.tracking.experiment,
            redact(cfg.tracking.uri),
        )
        log_config(cfg)
        logger = MLFlowLogger(
            experiment_name=cfg.tracking.experiment,
            tracking_uri=cfg.tracking.uri,
            run_id=run_id,
            artifact_location=None,
        )
        try:
            metrics, objects = train(cfg, logger, callbacks, datamodule, independent)
        except interruptions as stop:
            mlflow.set_tag("nscfate.interrupted", type(stop).__name__)
            mlflow.end_run("KILLED")
            raise
        oracle_by_day = _add_oracle(metrics, objects)
        log_model = promotable is None or promotable(metrics)
        log_results(cfg, metrics, objects, oracle_by_day, log_model)
        log_warnings(objects["warnings"])
    if cfg.objective not in metrics:
        raise NscfateError(
            f"objective={cfg.objective} was never logged by run {run_id} (no complete training epoch?)"
        )
    return _result(cfg, metrics, objects, run_id, oracle_by_day)


def _add_oracle(metrics: dict[str, float], objects: dict[str, Any]) -> dict[float, float]:
    """Add the latent oracle's metrics (synthetic data only) to ``metrics``; return its accuracy
    by day."""
    estimator = getattr(objects.get("evaluation"), "estimator", None)
    oracle = oracle_scores(objects["datamodule"], getattr(estimator, "settings", None))
    metrics |= oracle_metrics(oracle)
    return oracle.get("by_day", {})


def _result(
    cfg: DictConfig,
    metrics: dict[str, float],
    objects: dict[str, Any],
    run_id: str | None,
    oracle_by_day: dict[float, float],
) -> TrackedRun:
    evaluation = objects["evaluation"]
    return TrackedRun(
        float(metrics.get(cfg.objective, float("nan"))),
        metrics,
        run_id,
        objects["warnings"],
        evaluation.accuracy_by_day,
        oracle_by_day,
        evaluation.fractions,
    )
