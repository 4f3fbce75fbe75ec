"""Evaluation metrics on simulated predictions whose calibration is known."""

from __future__ import annotations

import numpy as np
import pandas as pd

from nscfate.data.schema import CLASSES
from nscfate.evaluation.evaluate import (
    PROB_COLUMNS,
    TEST_ECE,
    TEST_ECE_FLOOR,
    classification_metrics,
)


def cells_from(probs: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """A per-cell table as evaluation builds it, from probabilities and integer labels."""
    cells = pd.DataFrame(probs, columns=PROB_COLUMNS)
    cells["label"] = [CLASSES[k] for k in labels]
    cells["predicted"] = [CLASSES[k] for k in probs.argmax(1)]
    cells["day"] = 1.0
    return cells


def calibrated(n: int, rng: np.random.Generator, sharpness: float = 3.0):
    """Probabilities of a perfectly calibrated model: each cell's label is drawn from them."""
    logits = rng.normal(0, sharpness, (n, len(CLASSES)))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, draw_labels(probs, rng)


def draw_labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label per cell drawn from its probabilities."""
    return (rng.random(len(probs))[:, None] > probs.cumsum(1)[:, :-1]).sum(1)


def test_ece_floor_is_what_a_perfectly_calibrated_model_measures():
    """On 720 cells a perfectly calibrated model's 15-bin ECE is not 0: its mean over fresh label
    draws is the floor the metric reports, and it shrinks with the number of cells."""
    rng = np.random.default_rng(0)
    probs, _ = calibrated(720, rng)
    measured = [
        classification_metrics(cells_from(probs, labels))[TEST_ECE]
        for labels in (draw_labels(probs, rng) for _ in range(60))
    ]
    floor = classification_metrics(cells_from(*calibrated(720, np.random.default_rng(1))))
    any_labels = classification_metrics(cells_from(probs, np.zeros(720, dtype=int)))
    # the floor depends on the confidences, not on the labels
    assert abs(any_labels[TEST_ECE_FLOOR] - np.mean(measured)) < 0.004
    assert 0.01 < floor[TEST_ECE_FLOOR] < 0.05
    big_probs, big_labels = calibrated(20_000, np.random.default_rng(2))
    big = classification_metrics(cells_from(big_probs, big_labels))
    assert big[TEST_ECE_FLOOR] < floor[TEST_ECE_FLOOR] / 3
    assert big[TEST_ECE] < 2 * big[TEST_ECE_FLOOR]


def test_a_miscalibrated_model_measures_far_above_its_floor():
    rng = np.random.default_rng(4)
    probs, labels = calibrated(720, rng)
    sharp = probs**4 / (probs**4).sum(1, keepdims=True)  # overconfident: same argmax
    metrics = classification_metrics(cells_from(sharp, labels))
    assert metrics[TEST_ECE] > 3 * metrics[TEST_ECE_FLOOR]


def test_ece_floor_bins_as_torchmetrics_does():
    """The floor's vectorised ECE equals torchmetrics' on every label draw."""
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    from nscfate.evaluation.evaluate import ECE_BINS, ece_floor

    probs = torch.tensor(calibrated(300, np.random.default_rng(5))[0])
    gen = torch.Generator().manual_seed(0)
    draws = torch.multinomial(probs.float(), 20, replacement=True, generator=gen).T
    expected = np.mean(
        [float(multiclass_calibration_error(probs, y, 3, n_bins=ECE_BINS)) for y in draws]
    )
    assert abs(ece_floor(probs, draws=20) - expected) < 1e-6


def test_a_diverged_model_has_no_ece_floor_rather_than_an_error():
    """A run whose weights blew up gives NaN probabilities: the floor is NaN, as the ECE is, and
    the run goes on to report its non-finite objective."""
    probs, labels = calibrated(50, np.random.default_rng(6))
    probs[3] = np.nan
    metrics = classification_metrics(cells_from(probs, labels))
    assert np.isnan(metrics[TEST_ECE_FLOOR])
