"""Raw crops of any size and bit depth -> the normalised float batch a model was trained on.

Used by everything that feeds a trained model from outside a dataset store (the MLflow pyfunc
model, ``nscfate-predict``) so that it sees crops exactly as training did.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nscfate.data.imageio import fit_to_size
from nscfate.data.normalize import Normalizer
from nscfate.errors import NscfateError


def input_white_level(crop: np.ndarray, trained_white_level: int) -> float:
    """Full scale of one raw crop: 255 for 8-bit; for 16-bit the training store's 12/16-bit level.

    Float crops (JSON requests arrive as floats) are taken as [0, 1] when they stay within it and
    otherwise as raw grey levels of the smallest bit depth that holds them.
    """
    high_bit = float(trained_white_level if trained_white_level > 255 else 65535)
    if crop.dtype == np.uint8:
        return 255.0
    if crop.dtype == np.uint16:
        return high_bit
    peak = float(np.max(crop)) if crop.size else 0.0
    if peak <= 1.0:
        return 1.0
    return 255.0 if peak <= 255 else high_bit if peak <= high_bit else 65535.0


def as_crop_list(crops: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """Accept an N x H x W array, an N x 1 x H x W array, one H x W crop, or a list of 2-D crops."""
    if isinstance(crops, np.ndarray):
        if crops.ndim == 2:
            return [crops]
        if crops.ndim == 4 and crops.shape[1] == 1:
            crops = crops[:, 0]
        if crops.ndim != 3:
            raise NscfateError(
                f"crops of shape {crops.shape}: expected N x H x W grey crops (one channel)"
            )
        return list(crops)
    out = [np.asarray(c) for c in crops]
    for i, c in enumerate(out):
        if c.ndim == 3 and c.shape[0] == 1:
            out[i] = c[0]
        elif c.ndim != 2:
            raise NscfateError(
                f"crop {i} has shape {c.shape}: expected a 2-D grey crop (one channel)"
            )
    return out


def prepare_batch(
    crops: np.ndarray | Sequence[np.ndarray],
    size: tuple[int, int],
    normalizer: Normalizer,
    trained_white_level: int,
) -> np.ndarray:
    """Fit every crop to ``size`` (pad with its own background / centre-crop), scale to [0, 1] and
    normalise; returns float32 N x 1 x H x W."""
    batch = []
    for crop in as_crop_list(crops):
        white = input_white_level(crop, trained_white_level)
        unit = crop.astype(np.float32) / np.float32(white)
        batch.append(fit_to_size(unit, *size))
    if not batch:
        raise NscfateError("no crops to predict")
    return normalizer(np.stack(batch))[:, None].astype(np.float32)
