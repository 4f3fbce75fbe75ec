"""Intensity normalisation of grey crops: ``per_image`` (default), ``dataset`` or ``none``.

Real exports carry batch-dependent background levels that can correlate with class, so the default
removes each crop's own background level and contrast scale: a model must not win by reading the
background.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from nscfate.errors import NscfateError

Mode = Literal["per_image", "dataset", "none"]
MODES: tuple[str, ...] = ("per_image", "dataset", "none")

#: Width in pixels of the frame whose median is taken as a crop's background level.
BORDER = 2
#: Quantile of |crop - background| used as the crop's robust contrast scale.
SPREAD_QUANTILE = 0.99
#: Floor of the spread (in [0, 1] intensity units) so an empty, flat crop does not divide by zero.
MIN_SPREAD = 1e-3


def to_unit_float(raw: np.ndarray, white_level: float) -> np.ndarray:
    """Convert raw uint8/uint16 (or float) crops to float32 in [0, 1] by the store's white level."""
    return np.asarray(raw, dtype=np.float32) / np.float32(white_level)


def border_median(x: np.ndarray, border: int = BORDER) -> np.ndarray:
    """Median of the outer ``border``-pixel frame of each crop (``x`` is HxW or NxHxW)."""
    top, bottom = x[..., :border, :], x[..., -border:, :]
    left, right = x[..., border:-border, :border], x[..., border:-border, -border:]
    lead = x.shape[:-2]
    frame = np.concatenate([a.reshape(*lead, -1) for a in (top, bottom, left, right)], axis=-1)
    return np.median(frame, axis=-1)


def per_image(x: np.ndarray) -> np.ndarray:
    """Subtract each crop's background (border median) and divide by its robust spread.

    The spread is the 99th percentile of |crop - background|, so both the background level and a
    multiplicative gain cancel: two acquisitions of the same cell at different brightness give the
    same normalised crop. Works on one crop (HxW) or a stack (NxHxW) of float crops.
    """
    x = np.asarray(x, dtype=np.float32)
    bg = border_median(x)[..., None, None]
    d = x - bg
    lead = x.shape[:-2]
    spread = np.quantile(np.abs(d).reshape(*lead, -1), SPREAD_QUANTILE, axis=-1)
    spread = np.maximum(spread, MIN_SPREAD)[..., None, None]
    return (d / spread).astype(np.float32)


class Normalizer:
    """Callable normalisation of float crops in [0, 1]; ``dataset`` mode needs ``fit`` first."""

    def __init__(self, mode: str = "per_image") -> None:
        if mode not in MODES:
            raise NscfateError(
                f"unknown data.normalize {mode!r}: expected one of {', '.join(MODES)}"
            )
        self.mode = mode
        self.mean: float | None = None
        self.std: float | None = None

    def fit(self, x: np.ndarray) -> Normalizer:
        """Learn the dataset mean and standard deviation from training crops (``dataset`` mode)."""
        x = np.asarray(x, dtype=np.float64)
        self.mean, self.std = float(x.mean()), float(max(x.std(), MIN_SPREAD))
        return self

    def state(self) -> dict:
        """What is needed to rebuild this normaliser elsewhere (e.g. inside a served model)."""
        return {"mode": self.mode, "mean": self.mean, "std": self.std}

    @classmethod
    def from_state(cls, state: dict) -> Normalizer:
        """Rebuild a normaliser from :meth:`state`."""
        norm = cls(state["mode"])
        norm.mean, norm.std = state.get("mean"), state.get("std")
        return norm

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.mode == "per_image":
            return per_image(x)
        if self.mode == "dataset":
            if self.mean is None or self.std is None:
                raise NscfateError(
                    "data.normalize=dataset needs statistics: call fit() on the training crops"
                )
            return ((np.asarray(x, dtype=np.float32) - self.mean) / self.std).astype(np.float32)
        return np.asarray(x, dtype=np.float32)
