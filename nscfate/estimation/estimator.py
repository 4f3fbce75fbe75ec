"""Everything fit after training that turns logits into trustworthy answers, in one object.

A :class:`FateEstimator` holds the calibration, the OOD detector and the validation cells (logits
and labels) the fate-fraction correction and its intervals are learned from. It is fit once after
training (:func:`fit_estimator`), saved in the checkpoint and the pyfunc model (:meth:`state`), and
applied wherever probabilities and fractions are produced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

from nscfate.errors import NscfateError
from nscfate.estimation.calibration import METHODS as CALIBRATION_METHODS
from nscfate.estimation.calibration import Calibration, DayCalibration, fit_day_calibration
from nscfate.estimation.ood import OodDetector, fit_ood
from nscfate.estimation.quantify import (
    RESAMPLING,
    Interval,
    Reference,
    bootstrap_references,
    check_method,
    estimate_with_interval,
)

#: Where a checkpoint keeps the estimator state (calibration, OOD detector, validation cells).
ESTIMATION_KEY = "nscfate_estimation"


@dataclass(frozen=True)
class EstimationSettings:
    """``calibration.method``, ``quantify.*`` and ``ood.*`` of the run config."""

    calibration: str = "bcts"
    #: A calibration per day of culture where the validation split has enough cells of it.
    calibrate_by_day: bool = True
    quantify: str = "emq"
    n_boot: int = 200
    level: float = 0.95
    resample: str = "cultures"
    false_alarm_rate: float = 0.01
    seed: int = 0

    def check(self) -> EstimationSettings:
        """Fail with one line naming the setting on an unknown method or an impossible number."""
        if self.calibration not in CALIBRATION_METHODS:
            raise NscfateError(
                f"calibration.method={self.calibration!r}: expected one of "
                + ", ".join(CALIBRATION_METHODS)
            )
        check_method(self.quantify)
        if not 0 < self.false_alarm_rate < 1:
            raise NscfateError(
                f"ood.false_alarm_rate={self.false_alarm_rate}: expected a number in (0, 1)"
            )
        if self.resample not in RESAMPLING:
            raise NscfateError(
                f"quantify.resample={self.resample!r}: expected one of {', '.join(RESAMPLING)}"
            )
        if not 0 < self.level < 1 or self.n_boot < 0:
            raise NscfateError(
                f"quantify.level={self.level}, quantify.n_boot={self.n_boot}: expected a level in "
                "(0, 1) and a number of rounds >= 0"
            )
        return self

    @classmethod
    def from_config(cls, cfg: Any) -> EstimationSettings:
        """Read the settings from a run config (missing keys keep their defaults)."""
        get = lambda node, key, default: (cfg.get(node) or {}).get(key, default)  # noqa: E731
        return cls(
            calibration=get("calibration", "method", cls.calibration),
            calibrate_by_day=bool(get("calibration", "by_day", cls.calibrate_by_day)),
            quantify=get("quantify", "method", cls.quantify),
            n_boot=int(get("quantify", "n_boot", cls.n_boot)),
            level=float(get("quantify", "level", cls.level)),
            resample=get("quantify", "resample", cls.resample),
            false_alarm_rate=float(get("ood", "false_alarm_rate", cls.false_alarm_rate)),
            seed=int(cfg.get("seed", 0)),
        )


@dataclass
class FateEstimator:
    """Calibrated probabilities, OOD scores and corrected fate fractions for a trained model."""

    settings: EstimationSettings
    calibration: DayCalibration
    val_logits: np.ndarray
    val_labels: np.ndarray
    ood: OodDetector | None = None
    #: Culture of each validation cell (codes), for the two-stage bootstrap; None where unknown.
    val_cultures: np.ndarray | None = None
    #: Day of culture of each validation cell (NaN where unknown); None where no day is known.
    val_days: np.ndarray | None = None
    _resamples: list = field(default=None, repr=False)  # type: ignore[assignment]

    @classmethod
    def plain(cls, num_classes: int) -> FateEstimator:
        """No calibration, no OOD detector, classify-and-count fractions (models logged before
        estimators existed)."""
        empty = np.zeros((0, num_classes))
        return cls(
            EstimationSettings(calibration="none", quantify="cc", n_boot=0),
            DayCalibration(Calibration.identity(num_classes)),
            empty,
            np.zeros(0, dtype=np.int64),
        )

    def probabilities(self, logits: np.ndarray, days: np.ndarray | None = None) -> np.ndarray:
        """Calibrated class probabilities; ``days`` (each cell's day of culture, NaN where
        unknown) picks each cell's day calibration."""
        return self.calibration.probabilities(logits, days)

    def ood_scores(self, features: np.ndarray) -> np.ndarray:
        """Per-cell OOD score (NaN when the model has no detector)."""
        if self.ood is None:
            return np.full(len(features), np.nan)
        return self.ood.scores(features)

    def ood_flags(self, scores: np.ndarray) -> np.ndarray:
        """True for cells flagged as unlike the training data."""
        if self.ood is None:
            return np.zeros(len(scores), dtype=bool)
        return self.ood.flags(scores)

    @cached_property
    def reference(self) -> Reference:
        """The validation cells' calibrated posteriors and labels."""
        return Reference(self.probabilities(self.val_logits, self.val_days), self.val_labels)

    def by_culture(self) -> bool:
        """Whether intervals resample cultures (the setting asks for it)."""
        return self.settings.resample == "cultures"

    def fractions(
        self,
        logits: np.ndarray,
        seed: int = 0,
        cultures: np.ndarray | None = None,
        days: np.ndarray | None = None,
    ) -> Interval:
        """Corrected fate fractions of one group of cells, with a bootstrap interval (NaN for a
        diverged network). ``cultures``: the culture of each cell, for a two-stage bootstrap
        (ignored under ``quantify.resample=cells``); ``days``: each cell's day of culture."""
        if not (np.isfinite(logits).all() and np.isfinite(self.val_logits).all()):
            nan = np.full(np.asarray(logits).shape[1], np.nan)
            return Interval(nan, nan, nan)
        if self._resamples is None:
            self._resamples = bootstrap_references(
                self.val_logits,
                self.val_labels,
                self.calibration,
                self.settings.n_boot,
                self.settings.seed,
                self.val_cultures if self.by_culture() else None,
                self.val_days,
            )
        return estimate_with_interval(
            self.settings.quantify,
            np.asarray(logits, dtype=np.float64),
            self.calibration,
            self.reference,
            self._resamples,
            self.settings.level,
            seed,
            cultures if self.by_culture() else None,
            days,
        )

    def state(self) -> dict:
        """Tensors, numbers and strings only: loadable with ``torch.load(weights_only=True)``."""
        return {
            "settings": self.settings.__dict__.copy(),
            "calibration": self.calibration.state(),
            "val_logits": torch.as_tensor(self.val_logits, dtype=torch.float64),
            "val_labels": torch.as_tensor(self.val_labels, dtype=torch.int64),
            "ood": self.ood.state() if self.ood is not None else None,
            "val_cultures": None
            if self.val_cultures is None
            else torch.as_tensor(self.val_cultures, dtype=torch.int64),
            "val_days": None
            if self.val_days is None
            else torch.as_tensor(self.val_days, dtype=torch.float64),
        }

    @classmethod
    def from_state(cls, state: dict) -> FateEstimator:
        """Inverse of :meth:`state`."""
        return cls(
            EstimationSettings(**state["settings"]),
            DayCalibration.from_state(state["calibration"]),
            np.asarray(state["val_logits"], dtype=np.float64),
            np.asarray(state["val_labels"], dtype=np.int64),
            OodDetector.from_state(state["ood"]) if state.get("ood") else None,
            None
            if state.get("val_cultures") is None
            else np.asarray(state["val_cultures"], dtype=np.int64),
            None
            if state.get("val_days") is None
            else np.asarray(state["val_days"], dtype=np.float64),
        )


def fit_estimator(
    settings: EstimationSettings,
    val_logits: np.ndarray,
    val_labels: np.ndarray,
    train_features: np.ndarray | None = None,
    train_labels: np.ndarray | None = None,
    val_features: np.ndarray | None = None,
    val_cultures: np.ndarray | None = None,
    val_days: np.ndarray | None = None,
) -> FateEstimator:
    """Fit calibration on the validation cells and, given features, the OOD detector.
    ``val_cultures``: the culture of each validation cell (any labels), kept for the intervals;
    ``val_days``: its day of culture (NaN where unknown), for a calibration per day."""
    settings.check()
    codes = None if val_cultures is None else np.unique(val_cultures, return_inverse=True)[1]
    days = None if val_days is None else np.asarray(val_days, dtype=np.float64)
    if days is not None and not np.isfinite(days).any():
        days = None
    if not np.isfinite(val_logits).all():  # a diverged network: nothing to calibrate or measure
        return FateEstimator(
            settings,
            DayCalibration(Calibration.identity(np.asarray(val_logits).shape[1])),
            np.asarray(val_logits, np.float64),
            np.asarray(val_labels, np.int64),
            val_cultures=codes,
            val_days=days,
        )
    calibration = fit_day_calibration(
        val_logits, val_labels, days, settings.calibration, settings.calibrate_by_day
    )
    ood = None
    features = (train_features, val_features)
    if all(f is not None and np.isfinite(f).all() for f in features):
        ood = fit_ood(train_features, train_labels, val_features, settings.false_alarm_rate)
    return FateEstimator(
        settings,
        calibration,
        np.asarray(val_logits, np.float64),
        np.asarray(val_labels, np.int64),
        ood,
        codes,
        days,
    )
