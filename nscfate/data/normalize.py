"""Intensity normalisation of grey crops: ``per_image`` (default), ``dataset`` or ``none``.

Real exports carry batch-dependent background levels that can correlate with class, so the default
removes each crop's own background level and contrast scale: a model must not win by reading the
background.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch

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
    return _numpy(border_median_torch, x, border)


def per_image(x: np.ndarray) -> np.ndarray:
    """Subtract each crop's background (border median) and divide by its robust spread.

    The spread is the 99th percentile of |crop - background|, so both the background level and a
    multiplicative gain cancel: two acquisitions of the same cell at different brightness give the
    same normalised crop. Works on one crop (HxW) or a stack (NxHxW) of float crops. The numpy face
    of :func:`per_image_torch` (one implementation for training, evaluation and inference).
    """
    return _numpy(per_image_torch, x)


def border_median_torch(x: torch.Tensor, border: int = BORDER) -> torch.Tensor:
    """:func:`border_median` on a tensor (``...xHxW``), on the tensor's device."""
    top, bottom = x[..., :border, :], x[..., -border:, :]
    left, right = x[..., border:-border, :border], x[..., border:-border, -border:]
    frame = torch.cat([a.flatten(-2) for a in (top, bottom, left, right)], dim=-1)
    return quantile(frame, 0.5)


def per_image_torch(x: torch.Tensor) -> torch.Tensor:
    """Per-image normalisation of a float tensor of crops (``...xHxW``) on its own device: what the
    datamodule applies to a whole batch once it is on the device that trains."""
    return apply_per_image(x, per_image_stats(x))


def per_image_stats(x: torch.Tensor) -> torch.Tensor:
    """Each crop's (background, spread) as :func:`per_image_torch` finds them (``...x2``). They do
    not change when a crop's pixels are only reordered (flips, quarter turns), so a loader may keep
    them per crop; :func:`apply_per_image` then gives bit for bit what ``per_image_torch`` does."""
    background = border_median_torch(x)
    d = x - background[..., None, None]
    spread = quantile(d.abs().flatten(-2), SPREAD_QUANTILE).clamp_min(MIN_SPREAD)
    return torch.stack([background, spread], -1)


def apply_per_image(x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """Normalise crops ``x`` (``...xHxW``) by their :func:`per_image_stats` (``...x2``)."""
    return (x - stats[..., 0, None, None]).div_(stats[..., 1, None, None])


def quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q`` quantile along the last dimension with numpy's default (linear) interpolation.

    By partial selection (an unsorted ``topk`` of the smaller side, then the two values needed from
    it), which on a CPU is several times faster than
    ``torch.quantile`` or a full sort; ``torch.quantile`` also refuses more than 2**24 elements (a
    batch of 128 crops of 512 x 512 px) and ``torch.median`` returns the lower middle value, not
    numpy's mean of the two.
    """
    n = x.shape[-1]
    pos = q * (n - 1)
    lo = int(pos)
    # the (n - lo) largest, unordered: ordered[lo] and ordered[hi] are their two smallest
    if lo >= n // 2:
        top = x.topk(n - lo, dim=-1, sorted=False).values
        pair = top.topk(min(2, n - lo), dim=-1, largest=False).values
        below, above = pair[..., 0], pair[..., -1]
    else:  # the (lo + 2) smallest, unordered; ordered[hi] and ordered[lo] are their two largest
        bottom = x.topk(lo + 2, dim=-1, largest=False, sorted=False).values
        pair = bottom.topk(2, dim=-1).values
        below, above = pair[..., 1], pair[..., 0]
    return below + (above - below) * (pos - lo)


def _numpy(fn: Callable[..., torch.Tensor], x: np.ndarray, *args: Any) -> np.ndarray:
    out = fn(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), *args)
    return out.numpy().astype(np.float32, copy=False)


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
        """Normalise numpy crops (HxW or NxHxW) as :meth:`torch` does a batch on a device."""
        return _numpy(self.torch, x)

    def torch(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise float crops (``...xHxW``) on the tensor's own device."""
        if self.mode == "per_image":
            return per_image_torch(x)
        if self.mode == "dataset":
            if self.mean is None or self.std is None:
                raise NscfateError(
                    "data.normalize=dataset needs statistics: call fit() on the training crops"
                )
            return (x - self.mean) / self.std
        return x
