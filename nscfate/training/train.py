"""``train(cfg)``: fit, reload the best checkpoint, calibrate and fit the OOD detector on held-out
cells, evaluate test split and independent conditions.

A flat script in the lightning-hydra-template style: the datamodule, the LightningModule
(``conf/module``: network, optimizer, scheduler, loss), callbacks and trainer come from
``hydra.utils.instantiate``; loggers and extra callbacks (MLflow, Optuna pruning) are handed in by
the layers above, so this layer knows neither MLflow nor Optuna.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from nscfate.data.splits import TEST, TRAIN, VAL
from nscfate.errors import NscfateError, user_error_in
from nscfate.estimation import ESTIMATION_KEY, EstimationSettings, FateEstimator
from nscfate.evaluation.evaluate import (
    DYNAMIC_METRICS,
    FIT_METRICS,
    FRACTION_SUMMARY,
    TEST_METRICS,
    evaluate,
    fit_estimator_on,
    is_known_metric,
)
from nscfate.evaluation.health import check_run
from nscfate.files import atomic_write
from nscfate.redact import redact_values
from nscfate.training.module import FateClassifier
from nscfate.training.recipe import fit_to_data

log = logging.getLogger(__name__)


def check_objective(name: str) -> None:
    """Fail before training when the objective is a metric that is never logged."""
    if not is_known_metric(name):
        known = ", ".join(
            [
                *FIT_METRICS,
                *TEST_METRICS,
                *FRACTION_SUMMARY,
                *DYNAMIC_METRICS,
            ]
        )
        raise NscfateError(
            f"objective={name!r} is not a metric nscfate logs; expected one of {known}"
        )


def build(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, re-raising our own errors unwrapped (Hydra wraps them)."""
    try:
        return instantiate(node, **kwargs)
    except Exception as err:
        if (ours := user_error_in(err)) is not None and ours is not err:
            raise ours from None
        raise


def prepare(cfg: DictConfig) -> tuple[DictConfig, Any]:
    """Check what can be checked before anything starts, set up the data, fit the recipe to it.

    An unknown objective, architecture or estimation setting and a missing or broken store fail
    here, naming what is wrong. Returns the config with the batch size and epochs the recipe chose for this data (see
    ``nscfate.training.recipe``) and the set-up datamodule.
    """
    check_objective(cfg.objective)
    EstimationSettings.from_config(cfg).check()
    build(cfg.model)  # an unknown architecture fails here, naming close matches
    datamodule = build(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    sizes = {part: len(datamodule.datasets.get(part, ())) for part in (TRAIN, VAL)}
    cfg, _ = fit_to_data(cfg, n_train=sizes[TRAIN], n_val=sizes[VAL])
    datamodule.batch_size = cfg.data.batch_size
    return cfg, datamodule


def instantiate_callbacks(cfg: DictConfig | None, with_logger: bool = True) -> list[Callback]:
    """Every ``_target_`` node under ``cfg.callbacks`` (LearningRateMonitor only with a logger)."""
    built = [instantiate(node) for node in (cfg or {}).values() if node and "_target_" in node]
    return [cb for cb in built if with_logger or not isinstance(cb, LearningRateMonitor)]


def train(
    cfg: DictConfig,
    logger: Logger | None = None,
    callbacks: Sequence[Callback] = (),
    datamodule: Any = None,
    independent: Callable[[dict[str, float]], bool] | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit ``cfg.model`` on ``cfg.data``; evaluate the best checkpoint. Returns (metrics, objects).

    ``datamodule``: already built by :func:`prepare`, which also fitted ``cfg`` to the data (the
    caller logs that config); otherwise ``train`` prepares both itself. On ranks other than 0 (DDP)
    only the fit metrics are returned: evaluation happens on rank 0. ``independent`` (a sweep)
    says from the fit metrics whether to evaluate the held-out conditions too (default: yes).
    """
    if datamodule is None:
        cfg, datamodule = prepare(cfg)
    L.seed_everything(cfg.seed, workers=True)

    log.info("Instantiating model <%s>", cfg.model.name)
    module: FateClassifier = build(cfg.module)
    module.run_config = redact_values(OmegaConf.to_container(cfg, resolve=True))
    all_callbacks = [*instantiate_callbacks(cfg.get("callbacks"), logger is not None), *callbacks]
    trainer: L.Trainer = build(cfg.trainer, callbacks=all_callbacks, logger=logger or False)

    log.info("Fitting")
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in FIT_METRICS}
    objects = {"trainer": trainer, "module": module, "datamodule": datamodule}
    if not trainer.is_global_zero:
        return metrics, objects

    # Not trainer.test/predict(ckpt_path="best"): under DDP those run on every rank and each rank
    # gets a shard (measured: 2 CPU processes, 101 cells -> rank 0 predicts 51), while evaluation
    # (calibration, bootstrap intervals, OOD fit) needs every cell once, on rank 0. The trainer's
    # precision is kept below.
    best = best_checkpoint(trainer)
    if best:
        log.info("Testing the best checkpoint %s", best)
        module.load_state_dict(
            torch.load(best, map_location=module.device, weights_only=True)["state_dict"]
        )
    log.info("Calibrating on the validation split, fitting the OOD detector")
    # Inference in the trainer's precision (bf16-mixed on a GPU: autocast), as fitting ran.
    # The trainer's test limit holds for this evaluation too (fast_dev_run: one batch per split).
    limit = trainer.limit_test_batches
    with trainer.precision_plugin.forward_context():
        settings = EstimationSettings.from_config(cfg)
        estimator = fit_estimator_on(module, datamodule, settings, limit)
        parts = None if independent is None or independent(metrics) else [TEST]
        evaluation = evaluate(module, datamodule, estimator, parts, limit)
    if best:
        save_estimator(best, estimator)
    metrics |= evaluation.metrics
    warnings = check_run(metrics, evaluation.cells)
    for warning in warnings:
        log.warning("This model learned nothing useful: %s", warning)
    return metrics, objects | {
        "evaluation": evaluation,
        "best_checkpoint": best,
        "warnings": warnings,
    }


def save_estimator(checkpoint: str, estimator: FateEstimator) -> None:
    """Add the fitted calibration/OOD/correction state to a checkpoint (rewritten atomically)."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt[ESTIMATION_KEY] = estimator.state()
    with atomic_write(checkpoint) as tmp:
        torch.save(ckpt, tmp)


def best_checkpoint(trainer: L.Trainer) -> str | None:
    """Path of the best checkpoint, or None (fast_dev_run or no checkpoint callback)."""
    ckpt = trainer.checkpoint_callback
    return ckpt.best_model_path or None if isinstance(ckpt, ModelCheckpoint) else None
