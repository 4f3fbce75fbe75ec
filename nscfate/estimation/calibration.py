"""Post-hoc calibration of a classifier's logits, fit on the validation split after training.

Methods (``calibration.method``): ``none``; ``ts`` temperature scaling (one scale for all logits);
``bcts`` bias-corrected temperature scaling (one scale plus a bias per class; Alexandari et al. 2020
found it the best input to EM under label shift); ``vs`` vector scaling (a scale and a bias per
class). All are ``softmax(logits * scale + bias)`` with different parameters tied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax

from nscfate.errors import NscfateError

METHODS = ("none", "ts", "bcts", "vs")
#: Range of the fitted logit scale (1 / temperature) and of the class biases.
MIN_SCALE, MAX_SCALE, MAX_BIAS = 0.05, 20.0, 10.0


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration map: ``softmax(logits * scale + bias)``."""

    method: str
    scale: tuple[float, ...]
    bias: tuple[float, ...]

    @classmethod
    def identity(cls, num_classes: int) -> Calibration:
        """No calibration: plain softmax."""
        return cls("none", (1.0,) * num_classes, (0.0,) * num_classes)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities (N, K) from raw logits (N, K)."""
        z = np.asarray(logits, dtype=np.float64) * np.asarray(self.scale) + np.asarray(self.bias)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    @property
    def temperature(self) -> float:
        """1 / scale for ``ts``/``bcts`` (one shared scale); NaN for ``vs``."""
        return 1.0 / self.scale[0] if len(set(self.scale)) == 1 else float("nan")

    def state(self) -> dict:
        """Plain-data form, for checkpoints and the pyfunc model."""
        return {"method": self.method, "scale": list(self.scale), "bias": list(self.bias)}

    @classmethod
    def from_state(cls, state: dict) -> Calibration:
        """Inverse of :meth:`state`."""
        return cls(state["method"], tuple(state["scale"]), tuple(state["bias"]))


def fit_calibration(
    logits: np.ndarray,
    labels: np.ndarray,
    method: str = "bcts",
    start: Calibration | None = None,
) -> Calibration:
    """Fit ``method`` by minimising the negative log-likelihood of ``labels`` (L-BFGS-B, float64).

    ``start``: a fit of the same method to start from.
    """
    return fit_calibrations(logits, labels, np.ones((1, len(labels))), method, start)[0]


def fit_calibrations(
    logits: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    method: str = "bcts",
    start: Calibration | None = None,
) -> list[Calibration]:
    """One calibration per row of ``weights`` (B, N): each minimises the weighted NLL of the same
    cells. Bootstrap resamples are count weights, so B refits are one vectorised problem."""
    if method not in METHODS:
        raise NscfateError(f"calibration.method={method!r}: expected one of {', '.join(METHODS)}")
    z = np.asarray(logits, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    k, b = z.shape[1], len(w)
    if method == "none":
        return [Calibration.identity(k)] * b
    onehot = np.eye(k)[np.asarray(labels)]
    n_scale, n_bias = (k if method == "vs" else 1), (k if method in ("bcts", "vs") else 0)
    first = start or Calibration.identity(k)
    start_scale = np.clip(first.scale[:n_scale], MIN_SCALE, MAX_SCALE)
    start_bias = np.clip(first.bias[:n_bias], -MAX_BIAS, MAX_BIAS)
    theta0 = np.tile(np.concatenate([np.log(start_scale), start_bias]), b)
    share = w / w.sum(axis=1, keepdims=True)  # (B, N): each problem's mean over its cells

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        t = theta.reshape(b, n_scale + n_bias)
        scale = np.exp(t[:, :n_scale])[:, None, :]  # (B, 1, 1 or K)
        bias = t[:, None, n_scale:] if n_bias else 0.0  # (B, 1, K)
        logp = log_softmax(z[None] * scale + bias, axis=2)  # (B, N, K)
        residual = (np.exp(logp) - onehot[None]) * share[:, :, None]  # d loss / d logits
        grad_scale = (residual * z[None]).sum(axis=1)  # (B, K)
        if n_scale == 1:
            grad_scale = grad_scale.sum(axis=1, keepdims=True)
        grads = [grad_scale * scale[:, 0, :]]
        if n_bias:
            grads.append(residual.sum(axis=1))
        loss = -(logp * onehot[None] * share[:, :, None]).sum()
        return float(loss), np.concatenate(grads, axis=1).ravel()

    # Bounded: on a few perfectly separated cells the likelihood keeps rising as the scale grows,
    # and an unbounded search would run for thousands of steps toward an infinite scale.
    bounds = (
        [(np.log(MIN_SCALE), np.log(MAX_SCALE))] * n_scale + [(-MAX_BIAS, MAX_BIAS)] * n_bias
    ) * b
    fit = minimize(
        nll, theta0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 500}
    )
    theta = fit.x.reshape(b, n_scale + n_bias)
    out = []
    for t in theta:
        scale = np.broadcast_to(np.exp(t[:n_scale]), (k,))
        bias = t[n_scale:] - t[n_scale:].mean() if n_bias else np.zeros(k)
        # softmax ignores a common shift of the biases: keep them centred
        out.append(Calibration(method, tuple(map(float, scale)), tuple(map(float, bias))))
    return out
