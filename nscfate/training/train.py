"""``train(cfg)``: fit, reload the best checkpoint, evaluate test split and independent conditions.

A flat script in the lightning-hydra-template style: every object comes from
``hydra.utils.instantiate``; loggers and extra callbacks (MLflow, Optuna pruning) are handed in by
the layers above, so this layer knows neither MLflow nor Optuna.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from nscfate.data.store import open_store
from nscfate.errors import NscfateError, user_error_in
from nscfate.training.evaluate import TEST_METRICS, evaluate, is_known_metric
from nscfate.training.module import FIT_METRICS, FateClassifier

log = logging.getLogger(__name__)


def check_objective(name: str) -> None:
    """Fail before training when the objective is a metric that is never logged."""
    if not is_known_metric(name, FIT_METRICS):
        known = ", ".join(
            [*FIT_METRICS, *TEST_METRICS, "test/acc_day<d>", "indep/<condition>/pred_frac_<class>"]
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


def preflight(cfg: DictConfig) -> None:
    """Check what can be checked before anything starts: objective, model name, data location."""
    check_objective(cfg.objective)
    build(cfg.model)  # an unknown architecture fails here, naming close matches
    if not cfg.data.get("synthetic"):
        open_store(cfg.data.path)  # a missing or broken store fails here, naming the path


def build_module(cfg: DictConfig) -> FateClassifier:
    """The LightningModule: network from ``cfg.model``, optimiser/scheduler partials, loss settings."""
    net = build(cfg.model)
    if cfg.runtime.get("compile"):
        net = torch.compile(net)
    return FateClassifier(
        net=net,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler.scheduler) if cfg.scheduler.get("scheduler") else None,
        scheduler_interval=cfg.scheduler.interval,
        label_smoothing=cfg.loss.label_smoothing,
        class_weights=cfg.loss.class_weights,
        channels_last=cfg.runtime.channels_last,
    )


def instantiate_callbacks(cfg: DictConfig | None, with_logger: bool = True) -> list[Callback]:
    """Every ``_target_`` node under ``cfg.callbacks`` (LearningRateMonitor only with a logger)."""
    built = [instantiate(node) for node in (cfg or {}).values() if node and "_target_" in node]
    return [cb for cb in built if with_logger or not isinstance(cb, LearningRateMonitor)]


def train(
    cfg: DictConfig,
    logger: Logger | None = None,
    callbacks: Sequence[Callback] = (),
    checked: bool = False,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit ``cfg.model`` on ``cfg.data``; evaluate the best checkpoint. Returns (metrics, objects).

    ``checked``: the caller already ran :func:`preflight`. On ranks other than 0 (DDP) only the fit
    metrics are returned: evaluation happens on rank 0.
    """
    if not checked:
        preflight(cfg)
    L.seed_everything(cfg.seed, workers=True)

    log.info("Instantiating datamodule <%s>", cfg.data._target_)
    datamodule = build(cfg.data)
    log.info("Instantiating model <%s>", cfg.model.name)
    module = build_module(cfg)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    all_callbacks = [*instantiate_callbacks(cfg.get("callbacks"), logger is not None), *callbacks]
    trainer: L.Trainer = build(cfg.trainer, callbacks=all_callbacks, logger=logger or False)

    log.info("Fitting")
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in FIT_METRICS}
    objects = {"trainer": trainer, "module": module, "datamodule": datamodule}
    if not trainer.is_global_zero:
        return metrics, objects

    best = best_checkpoint(trainer)
    if best:
        log.info("Testing the best checkpoint %s", best)
        module.load_state_dict(
            torch.load(best, map_location=module.device, weights_only=False)["state_dict"]
        )
    evaluation = evaluate(module, datamodule)
    metrics |= evaluation.metrics
    return metrics, objects | {"evaluation": evaluation, "best_checkpoint": best}


def best_checkpoint(trainer: L.Trainer) -> str | None:
    """Path of the best checkpoint, or None (fast_dev_run or no checkpoint callback)."""
    ckpt = trainer.checkpoint_callback
    return ckpt.best_model_path or None if isinstance(ckpt, ModelCheckpoint) else None
