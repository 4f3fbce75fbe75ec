"""The training recipe follows the data: ``data.batch_size=auto`` and ``trainer.max_epochs=auto``.

A batch size and an epoch count that suit thousands of training cells give a lab's 500 a few dozen
optimizer steps, and the model learns nothing: it predicts one class. So the defaults are ``auto``,
resolved from the size of the training set before anything else starts:

- ``data.batch_size=auto``: ``recipe.max_batch_size``, halved (not below ``recipe.min_batch_size``)
  until an epoch has ``recipe.min_batches_per_epoch`` optimizer steps;
- ``trainer.max_epochs=auto``: at least ``recipe.min_epochs``, more until the run has
  ``recipe.min_steps`` optimizer steps (at most ``recipe.max_epochs``), and Lightning's
  ``trainer.min_steps`` keeps early stopping from ending the run before them (on a few hundred
  validation cells macro-F1 is noisy enough to stop a small run long before it has learned).

A number instead of ``auto`` is used exactly as given. Whatever the recipe, fractional batch limits
(``trainer.limit_val_batches=0.5``) that would leave a small loader with no batch at all become one
batch.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, open_dict

from nscfate.errors import NscfateError

log = logging.getLogger(__name__)

#: The value of ``data.batch_size`` and ``trainer.max_epochs`` that asks the recipe.
AUTO = "auto"
#: Trainer limits that Lightning refuses when their fraction of a loader is less than one batch.
LIMITS: tuple[str, ...] = ("limit_train_batches", "limit_val_batches")


@dataclass(frozen=True)
class Plan:
    """How long a run trains, derived from the size of its training set."""

    n_train: int
    batch_size: int
    steps_per_epoch: int
    max_epochs: int
    min_steps: int = 0

    @property
    def steps(self) -> int:
        """Optimizer steps if no callback stops the run early."""
        return self.steps_per_epoch * self.max_epochs

    def describe(self) -> str:
        """One line for the log: what the recipe chose."""
        return (
            f"{self.n_train} training cells: batch {self.batch_size}, {self.steps_per_epoch} steps "
            f"per epoch, {self.max_epochs} epochs ({self.steps} steps"
            + (f", at least {self.min_steps} before early stopping)" if self.min_steps else ")")
        )


def steps_per_epoch(n_train: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps in one epoch, as the datamodule's loader batches (a ragged last batch is
    dropped only when each process sees at least two full batches)."""
    per_rank = math.ceil(n_train / max(world_size, 1))
    full, ragged = divmod(per_rank, batch_size)
    return full if per_rank >= 2 * batch_size else full + bool(ragged)


def plan_training(
    n_train: int,
    batch_size: int | str,
    max_epochs: int | str,
    recipe: Mapping[str, Any],
    world_size: int = 1,
) -> Plan:
    """Resolve ``auto`` batch size and epochs for ``n_train`` cells (see the module docstring)."""
    if n_train < 1:
        raise NscfateError("the training split is empty: nothing to train on")
    if batch_size == AUTO:
        batch_size = _auto_batch_size(math.ceil(n_train / max(world_size, 1)), recipe)
    _check_count("data.batch_size", batch_size)
    steps = steps_per_epoch(n_train, batch_size, world_size)
    if max_epochs != AUTO:
        _check_count("trainer.max_epochs", max_epochs)
        return Plan(n_train, batch_size, steps, max_epochs)
    wanted = max(recipe["min_epochs"], math.ceil(recipe["min_steps"] / steps))
    max_epochs = min(wanted, recipe["max_epochs"])
    return Plan(
        n_train, batch_size, steps, max_epochs, min(recipe["min_steps"], steps * max_epochs)
    )


def _auto_batch_size(per_rank: int, recipe: Mapping[str, Any]) -> int:
    batch, floor = int(recipe["max_batch_size"]), int(recipe["min_batch_size"])
    while batch > floor and per_rank < recipe["min_batches_per_epoch"] * batch:
        batch = max(floor, batch // 2)
    return batch


def _check_count(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NscfateError(f"{key}={value}: expected a positive integer or {AUTO}")


def world_size(trainer: Mapping[str, Any]) -> int:
    """Processes that share an epoch: devices (a count or a list) times nodes."""
    devices = trainer.get("devices", 1)
    count = len(devices) if isinstance(devices, (list, tuple)) else devices
    count = count if isinstance(count, int) and count > 0 else 1
    return count * int(trainer.get("num_nodes", 1) or 1)


def fit_to_data(cfg: DictConfig, n_train: int, n_val: int) -> tuple[DictConfig, Plan]:
    """A copy of ``cfg`` with ``auto`` batch size and epochs resolved for the data, and batch
    limits that give every loader at least one batch."""
    cfg = copy.deepcopy(cfg)
    trainer = cfg.trainer
    world = world_size(trainer)
    plan = plan_training(n_train, cfg.data.batch_size, trainer.max_epochs, cfg.recipe, world)
    log.info("Recipe: %s", plan.describe())
    batches = {
        "limit_train_batches": plan.steps_per_epoch,
        "limit_val_batches": math.ceil(
            n_val / (cfg.data.get("eval_batch_size") or plan.batch_size)
        ),
    }
    debug = trainer.get("fast_dev_run") or trainer.get("overfit_batches")
    with open_dict(cfg):
        cfg.data.batch_size, trainer.max_epochs = plan.batch_size, plan.max_epochs
        if plan.min_steps and not debug:
            trainer.min_steps = plan.min_steps
        for key in LIMITS:
            limit = trainer.get(key)
            if isinstance(limit, float) and 0 < limit < 1 and int(limit * batches[key]) < 1:
                trainer[key] = 1  # Lightning would refuse a fraction worth less than one batch
    return cfg, plan
