"""Normalisation: per-image cancels background level and gain; dataset and none modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nscfate.data.normalize import Normalizer, per_image, quantile, to_unit_float
from nscfate.errors import NscfateError


def _cell(level: float, gain: float = 1.0) -> np.ndarray:
    y, x = np.mgrid[:32, :32]
    r = np.hypot(y - 16, x - 15)
    transmission = 1 - 0.3 * np.exp(-((r - 6) ** 2) / 2) + 0.1 * np.exp(-((r - 8) ** 2) / 2)
    return (level * gain * transmission).astype(np.float32)


def test_per_image_cancels_background_level_and_gain():
    a = per_image(_cell(0.4))
    b = per_image(_cell(0.6, gain=1.3))
    assert np.allclose(a, b, atol=1e-5)
    assert abs(np.median(np.concatenate([a[0], a[-1]]))) < 1e-6  # background sits at zero


def test_per_image_works_on_stacks_and_flat_crops():
    stack = np.stack([_cell(0.4), _cell(0.6)])
    assert np.allclose(per_image(stack)[1], per_image(stack[1]))
    flat = per_image(np.full((16, 16), 0.5, np.float32))
    assert np.isfinite(flat).all() and np.abs(flat).max() == 0


def test_dataset_mode_uses_training_statistics():
    train = np.random.default_rng(0).normal(0.5, 0.1, (50, 8, 8)).astype(np.float32)
    norm = Normalizer("dataset").fit(train)
    out = norm(train)
    assert out.mean() == pytest.approx(0, abs=1e-4) and out.std() == pytest.approx(1, abs=1e-3)
    again = Normalizer.from_state(norm.state())
    assert np.allclose(again(train), out)
    with pytest.raises(NscfateError, match="call fit"):
        Normalizer("dataset")(train)


def test_none_mode_and_unit_conversion():
    raw16 = np.array([[0, 4095]], np.uint16)
    assert to_unit_float(raw16, 4095).tolist() == [[0.0, 1.0]]
    assert np.array_equal(Normalizer("none")(np.ones((2, 2))), np.ones((2, 2), np.float32))
    with pytest.raises(NscfateError, match="unknown data.normalize 'zscore'"):
        Normalizer("zscore")


@pytest.mark.parametrize("n", [1, 2, 3, 8, 248, 4096])
@pytest.mark.parametrize("q", [0.0, 0.01, 0.5, 0.99, 1.0])
def test_quantile_is_numpys_with_ties_and_tiny_rows(n, q):
    rng = np.random.default_rng(n)
    rows = np.concatenate([rng.random((3, n)), rng.integers(0, 4, (3, n))]).astype(np.float32)
    got = quantile(torch.from_numpy(rows), q).numpy()
    np.testing.assert_allclose(got, np.quantile(rows, q, axis=-1), rtol=0, atol=1e-6)
