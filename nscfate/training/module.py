"""One LightningModule for every architecture: cross-entropy, torchmetrics per stage, best-so-far F1.

It logs the fit metrics named in ``nscfate.evaluation.evaluate`` (``FIT_METRICS``): ``train/loss``,
``train/acc``, ``val/loss``, ``val/acc``, ``val/f1_macro`` and ``val/f1_macro_best`` (the best
epoch so far, the default sweep objective).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from nscfate.data.schema import CLASSES
from nscfate.evaluation.evaluate import (
    TRAIN_ACC,
    TRAIN_LOSS,
    VAL_F1_BEST,
    VAL_LOSS,
    VAL_PREFIX,
)


class FateClassifier(L.LightningModule):
    """Classify grey crops into fates with any backbone ``net`` (logits out, one per class).

    Args:
        net: the architecture (from ``nscfate.models.create_model``).
        optimizer: a partial that takes the parameters (Hydra ``_partial_: true``).
        scheduler: a partial that takes the optimizer, or None.
        scheduler_interval: ``epoch`` or ``step``.
        label_smoothing: cross-entropy label smoothing.
        class_weights: optional per-class loss weights, in CLASSES order.
        channels_last: keep activations in NHWC (faster convolutions on GPUs).
        compile: ``torch.compile`` the network (GPUs; no gain on CPU).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | None = None,
        channels_last: bool = False,
        compile: bool = False,
        num_classes: int = len(CLASSES),
    ) -> None:
        super().__init__()
        net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.net = torch.compile(net) if compile else net  # GPU; useless on CPU
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_interval, self.channels_last = scheduler_interval, channels_last
        weight = (
            torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        )
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "f1_macro": MulticlassF1Score(num_classes, average="macro"),
            },
            prefix=VAL_PREFIX,
        )
        self.val_f1_best = MaxMetric()
        #: The run's resolved config, saved in every checkpoint so it can be evaluated on its own.
        self.run_config: dict | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["image"])
        return self.criterion(logits, batch["label"]), logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, logits = self._step(batch)
        self.train_acc(logits, batch["label"])
        self.log(TRAIN_LOSS, loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log(TRAIN_ACC, self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, logits = self._step(batch)
        self.val_metrics(logits, batch["label"])
        self.log(VAL_LOSS, loss, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log_dict(self.val_metrics, on_epoch=True, prog_bar=True)

    def on_train_start(self) -> None:
        self.val_f1_best.reset()  # the sanity check's validation must not count as an epoch

    def on_validation_epoch_end(self) -> None:
        self.val_f1_best(self.val_metrics["f1_macro"].compute())
        self.log(VAL_F1_BEST, self.val_f1_best.compute(), prog_bar=True, sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nscfate_config"] = self.run_config

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self._build_scheduler(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }

    def _build_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        factory = self.scheduler_factory
        # Step-based schedules (OneCycle) need the run's length, known only once the trainer is set up.
        if isinstance(factory, partial) and factory.keywords.get("total_steps", 0) is None:
            factory = partial(factory, total_steps=int(self.trainer.estimated_stepping_batches))
        accepted = inspect.signature(factory).parameters
        return factory(optimizer=optimizer) if "optimizer" in accepted else factory(optimizer)
