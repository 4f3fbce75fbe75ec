"""Post-hoc calibration of a classifier's logits, fit on the validation split after training.

Methods (``calibration.method``): ``none``; ``ts`` temperature scaling (one scale for all logits);
``bcts`` bias-corrected temperature scaling (one scale plus a bias per class; Alexandari et al. 2020
found it the best input to EM under label shift); ``vs`` vector scaling (a scale and a bias per
class). All are ``softmax(logits * scale + bias)`` with different parameters tied.

With ``calibration.by_day`` (:class:`DayCalibration`) each day of culture with enough validation
cells gets its own map and other cells the pooled one: a network is overconfident on day-1 cells,
which barely differ yet, and underconfident on day-7 cells, so one temperature fits neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import log_softmax

from nscfate.errors import NscfateError

METHODS = ("none", "ts", "bcts", "vs")
#: Range of the fitted logit scale (1 / temperature) and of the (centred) class biases.
MIN_SCALE, MAX_SCALE, MAX_BIAS = 0.05, 20.0, 10.0
#: A day gets its own calibration when the validation split holds this many cells of every class
#: on it; other days (and cells of unknown day) use the pooled one.
MIN_CELLS_PER_CLASS = 30


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


@dataclass(frozen=True)
class DayCalibration:
    """A calibration per day of culture (``days``: (day, map) pairs) and the ``pooled`` one, fit
    on every validation cell, for cells of other or unknown days."""

    pooled: Calibration
    days: tuple[tuple[float, Calibration], ...] = ()

    @property
    def method(self) -> str:
        """The calibration method of every map."""
        return self.pooled.method

    def probabilities(self, logits: np.ndarray, days: np.ndarray | None = None) -> np.ndarray:
        """Calibrated class probabilities (N, K): each cell through its day's map (``days``, one
        per cell, NaN where unknown), the pooled map where its day has none."""
        probs = self.pooled.probabilities(logits)
        if days is None or not self.days:
            return probs
        days = np.asarray(days, dtype=np.float64)
        z = np.asarray(logits)
        for day, calibration in self.days:
            on_day = days == day
            if on_day.any():
                probs[on_day] = calibration.probabilities(z[on_day])
        return probs

    def state(self) -> dict:
        """Plain-data form, for checkpoints and the pyfunc model."""
        return self.pooled.state() | {"days": [[d, c.state()] for d, c in self.days]}

    @classmethod
    def from_state(cls, state: dict) -> DayCalibration:
        """Inverse of :meth:`state` (a single map's state, from before days, has no days)."""
        days = tuple((float(d), Calibration.from_state(c)) for d, c in state.get("days", []))
        return cls(Calibration.from_state(state), days)


def calibrated_days(labels: np.ndarray, days: np.ndarray | None, num_classes: int) -> list[float]:
    """The days with at least :data:`MIN_CELLS_PER_CLASS` validation cells of every class."""
    if days is None:
        return []
    days = np.asarray(days, dtype=np.float64)
    out = []
    for day in np.unique(days[np.isfinite(days)]):
        counts = np.bincount(np.asarray(labels)[days == day], minlength=num_classes)
        if counts.min() >= MIN_CELLS_PER_CLASS:
            out.append(float(day))
    return out


def fit_day_calibrations(
    logits: np.ndarray,
    labels: np.ndarray,
    days: np.ndarray | None,
    weights: np.ndarray,
    method: str = "bcts",
    start: DayCalibration | None = None,
    by_day: bool = True,
) -> list[DayCalibration]:
    """One :class:`DayCalibration` per row of ``weights`` (B, N): the pooled map on every cell and,
    with ``by_day``, one map per day with enough cells (:func:`calibrated_days`), each on its day's
    cells, all B problems of a day fitted at once (:func:`fit_calibrations`)."""
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    w = np.asarray(weights, dtype=np.float64)
    pooled = fit_calibrations(z, y, w, method, start.pooled if start else None)
    fitted_days = calibrated_days(y, days, z.shape[1]) if by_day and method != "none" else []
    starts = dict(start.days) if start else {}
    per_day = []
    day_of = np.asarray(days, dtype=np.float64) if fitted_days else None
    for day in fitted_days:
        on_day = day_of == day
        weights_on_day = w[:, on_day]
        # a bootstrap draw without a day's cells keeps the pooled map for that day
        empty = weights_on_day.sum(axis=1) == 0
        weights_on_day[empty] = 1.0
        fits = fit_calibrations(z[on_day], y[on_day], weights_on_day, method, starts.get(day))
        per_day.append([pooled[b] if empty[b] else fit for b, fit in enumerate(fits)])
    return [
        DayCalibration(
            pooled[b], tuple((d, fits[b]) for d, fits in zip(fitted_days, per_day, strict=True))
        )
        for b in range(len(w))
    ]


def fit_day_calibration(
    logits: np.ndarray,
    labels: np.ndarray,
    days: np.ndarray | None,
    method: str = "bcts",
    by_day: bool = True,
) -> DayCalibration:
    """:func:`fit_day_calibrations` on all cells, each counted once."""
    weights = np.ones((1, len(labels)))
    return fit_day_calibrations(logits, labels, days, weights, method, by_day=by_day)[0]


def fit_calibration(
    logits: np.ndarray,
    labels: np.ndarray,
    method: str = "bcts",
    start: Calibration | None = None,
) -> Calibration:
    """Fit ``method`` by minimising the negative log-likelihood of ``labels`` (Newton, float64).

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
    cells. Bootstrap resamples are count weights, so B refits are one vectorised problem.

    Damped Newton steps for all B problems at once (each has at most 2K parameters, so its
    Hessian is tiny): about 10 iterations to convergence, where one L-BFGS on the stacked problem
    took hundreds of evaluations and stopped short of each problem's own optimum.
    """
    if method not in METHODS:
        raise NscfateError(f"calibration.method={method!r}: expected one of {', '.join(METHODS)}")
    z = np.asarray(logits, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    k, b = z.shape[1], len(w)
    if method == "none":
        return [Calibration.identity(k)] * b
    problem = _WeightedNll(
        z,
        np.eye(k)[np.asarray(labels)],
        w / w.sum(axis=1, keepdims=True),
        n_scale=k if method == "vs" else 1,
        n_bias=k if method in ("bcts", "vs") else 0,
    )
    first = start or Calibration.identity(k)
    theta = np.tile(
        np.concatenate(
            [
                np.log(np.clip(first.scale[: problem.n_scale], MIN_SCALE, MAX_SCALE)),
                np.clip(first.bias[: problem.n_bias], -MAX_BIAS, MAX_BIAS),
            ]
        ),
        (b, 1),
    )
    theta = _newton(problem, theta)
    out = []
    for t in theta:
        scale = np.broadcast_to(np.exp(t[: problem.n_scale]), (k,))
        bias = t[problem.n_scale :] - t[problem.n_scale :].mean() if problem.n_bias else np.zeros(k)
        # softmax ignores a common shift of the biases: keep them centred
        out.append(Calibration(method, tuple(map(float, scale)), tuple(map(float, bias))))
    return out


class _WeightedNll:
    """B weighted negative log-likelihoods of ``softmax(z * exp(log_scale) + bias)`` over the
    same cells; ``share`` (B, N) holds each problem's cell weights, summing to one."""

    def __init__(
        self, z: np.ndarray, onehot: np.ndarray, share: np.ndarray, n_scale: int, n_bias: int
    ) -> None:
        self.z, self.onehot, self.share = z, onehot, share
        self.n_scale, self.n_bias = n_scale, n_bias

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of the parameters (log scale, then bias)."""
        low = [np.log(MIN_SCALE)] * self.n_scale + [-MAX_BIAS] * self.n_bias
        high = [np.log(MAX_SCALE)] * self.n_scale + [MAX_BIAS] * self.n_bias
        return np.array(low), np.array(high)

    def logp(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-problem log-probabilities (B, N, K) and scales (B, 1, 1 or K)."""
        scale = np.exp(theta[:, : self.n_scale])[:, None, :]
        bias = theta[:, None, self.n_scale :] if self.n_bias else 0.0
        return log_softmax(self.z[None] * scale + bias, axis=2), scale

    def loss(self, theta: np.ndarray) -> np.ndarray:
        """The B losses."""
        logp, _ = self.logp(theta)
        return -((logp * self.onehot[None]).sum(axis=2) * self.share).sum(axis=1)

    def derivatives(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Losses (B,), gradients (B, P) and Hessians (B, P, P), in closed form per block
        (scales, biases) so that nothing larger than (B, N, K) is formed."""
        logp, scale = self.logp(theta)
        p = np.exp(logp)
        sh = self.share[:, :, None]
        loss = -((logp * self.onehot[None]).sum(axis=2) * self.share).sum(axis=1)
        a = self.z[None] * scale  # d logits / d log_scale (B, N, K)
        pa = p * a
        residual = (p - self.onehot[None]) * sh  # d loss / d logits
        # Softmax curvature J^T (diag p - p p^T) J, summed over cells, block by block
        tr = np.transpose
        s_pa2, s_pa, s_p = (pa * a * sh).sum(axis=1), (pa * sh).sum(axis=1), (p * sh).sum(axis=1)
        c_cc = np.matmul(tr(pa * sh, (0, 2, 1)), pa)  # sum of share * pa_j * pa_l
        c_cp = np.matmul(tr(pa * sh, (0, 2, 1)), p)  # sum of share * pa_j * p_l
        c_pp = np.matmul(tr(p * sh, (0, 2, 1)), p)
        grad_b = residual.sum(axis=1)
        if self.n_scale == 1:
            grad_s = (residual * a).sum(axis=(1, 2))[:, None]
            h_ss = (s_pa2.sum(axis=1) - c_cc.sum(axis=(1, 2)))[:, None, None]
            h_sb = (s_pa - c_cp.sum(axis=1))[:, None, :]
        else:
            grad_s = (residual * a).sum(axis=1)
            h_ss = _diag(s_pa2) - c_cc
            h_sb = _diag(s_pa) - c_cp
        # the exp parametrisation's second derivative: d^2 logits / d log_scale^2 = a
        h_ss = h_ss + _diag(grad_s)
        if not self.n_bias:
            return loss, grad_s, h_ss
        h_bb = _diag(s_p) - c_pp
        top = np.concatenate([h_ss, h_sb], axis=2)
        bottom = np.concatenate([tr(h_sb, (0, 2, 1)), h_bb], axis=2)
        return loss, np.concatenate([grad_s, grad_b], axis=1), np.concatenate([top, bottom], 1)


def _diag(v: np.ndarray) -> np.ndarray:
    """(B, P) -> (B, P, P) diagonal matrices."""
    return v[:, :, None] * np.eye(v.shape[1])


def _newton(problem: _WeightedNll, theta: np.ndarray, max_iter: int = 100) -> np.ndarray:
    """Projected, damped Newton iterations for every problem at once.

    Parameters held at a bound by their gradient are fixed for the step; a step is halved until
    the loss does not rise. The biases are
    kept centred (softmax ignores their common shift), so their bound holds for centred values.
    """
    low, high = problem.bounds()
    n_scale, n_params = problem.n_scale, theta.shape[1]
    theta = _centred(theta, n_scale)
    active = np.ones(len(theta), dtype=bool)
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        if not len(idx):
            break
        sub = _rows(problem, idx)
        here = theta[idx]
        loss, grad, hess = sub.derivatives(here)
        held = ((here <= low + 1e-12) & (grad > 0)) | ((here >= high - 1e-12) & (grad < 0))
        free = (~held).astype(float)
        grad = grad * free
        hess = hess * free[:, :, None] * free[:, None, :] + np.eye(n_params) * (1 - free)[:, None]
        # The loss is not convex in the log scale: shift the Hessian to positive definite where it
        # is not (Levenberg-Marquardt), plus a small ridge for the biases' flat common shift.
        lowest = np.linalg.eigvalsh(hess)[:, 0]
        ridge = 1e-9 + 1e-6 * np.abs(hess).max(axis=(1, 2)) + np.maximum(-lowest, 0) * 1.5
        step = -np.linalg.solve(hess + ridge[:, None, None] * np.eye(n_params), grad[..., None])
        step = step[..., 0]
        new = np.clip(_centred(here + step, n_scale), low, high)
        new_loss = sub.loss(new)
        for _ in range(30):
            worse = new_loss > loss + 1e-15
            if not worse.any():
                break
            step[worse] /= 2
            new[worse] = np.clip(_centred(here[worse] + step[worse], n_scale), low, high)
            new_loss[worse] = _rows(sub, np.flatnonzero(worse)).loss(new[worse])
        better = new_loss <= loss + 1e-15
        theta[idx] = np.where(better[:, None], new, here)
        moved = np.abs(new - here).max(axis=1)
        active[idx] = better & (moved > 1e-10) & (loss - new_loss > 1e-15)
    return theta


def _centred(theta: np.ndarray, n_scale: int) -> np.ndarray:
    """The same calibrations with their biases shifted to mean zero."""
    out = theta.copy()
    if out.shape[1] > n_scale:
        out[:, n_scale:] -= out[:, n_scale:].mean(axis=1, keepdims=True)
    return out


def _rows(problem: _WeightedNll, rows: np.ndarray) -> _WeightedNll:
    """The same problem restricted to some of its B weightings."""
    return _WeightedNll(
        problem.z, problem.onehot, problem.share[rows], problem.n_scale, problem.n_bias
    )
