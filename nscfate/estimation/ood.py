"""Out-of-distribution flag: Mahalanobis distance on the network's penultimate features.

Class means and a shared covariance are fit on the training cells' features (Lee et al. 2018; the
covariance is scikit-learn's Ledoit-Wolf estimate, which stays well conditioned when a network has
more features than there are cells); the score is the squared distance to the closest class
mean. The threshold is the validation cells' score quantile for the chosen false-alarm rate, so
about that share of in-distribution crops is flagged. (pytorch-ood's detector computes the same
distance but importing it costs ~6 s per process: it pulls in torchvision and torch._dynamo.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from nscfate.errors import NscfateError


@dataclass
class OodDetector:
    """A fitted detector: ``scores(features)`` (higher = less like training), ``flag`` above threshold."""

    mu: np.ndarray
    precision: np.ndarray
    threshold: float
    false_alarm_rate: float

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Per-cell OOD score: squared Mahalanobis distance to the closest class mean."""
        z = np.asarray(features, dtype=np.float64)
        distances = [np.einsum("nd,de,ne->n", z - mu, self.precision, z - mu) for mu in self.mu]
        return np.min(distances, axis=0)

    def flags(self, scores: np.ndarray) -> np.ndarray:
        """True where a score is above the validation threshold."""
        return np.asarray(scores) > self.threshold

    def state(self) -> dict:
        """Tensors and numbers, for checkpoints and the pyfunc model."""
        return {
            "mu": torch.as_tensor(self.mu),
            "precision": torch.as_tensor(self.precision),
            "threshold": self.threshold,
            "false_alarm_rate": self.false_alarm_rate,
        }

    @classmethod
    def from_state(cls, state: dict) -> OodDetector:
        """Inverse of :meth:`state`."""
        return cls(
            np.asarray(state["mu"]),
            np.asarray(state["precision"]),
            float(state["threshold"]),
            float(state["false_alarm_rate"]),
        )


def fit_gaussians(features: np.ndarray, labels: np.ndarray) -> OodDetector:
    """Class means and a shared Ledoit-Wolf covariance of labelled features (labels < 0 are
    ignored); the threshold is left unset (infinite)."""
    z = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    present = np.unique(labels[labels >= 0])  # a class missing from training has no mean
    mu = np.stack([z[labels == k].mean(axis=0) for k in present])
    centred = z[labels >= 0] - mu[np.searchsorted(present, labels[labels >= 0])]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    return OodDetector(mu, precision, float("inf"), float("nan"))


def fit_ood(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    false_alarm_rate: float = 0.01,
) -> OodDetector:
    """Fit class means and covariance on training features; set the threshold on validation."""
    if not 0 < false_alarm_rate < 1:
        raise NscfateError(f"ood.false_alarm_rate={false_alarm_rate}: expected a number in (0, 1)")
    fitted = fit_gaussians(train_features, train_labels)
    fitted.false_alarm_rate = false_alarm_rate
    fitted.threshold = float(np.quantile(fitted.scores(val_features), 1 - false_alarm_rate))
    return fitted
