"""Fate fractions of a group of cells under prior shift, with bootstrap intervals.

Counting argmax predictions (``cc``) pulls every estimate toward the mix the classifier was trained
on. The corrected methods use what the validation split says about the classifier's errors:

- ``pcc``: mean of the calibrated posteriors (no correction for prior shift);
- ``acc`` / ``pacc``: (probabilistic) adjusted count, inverting the validation confusion matrix;
- ``emq``: EM prior adjustment of calibrated posteriors (Saerens, Latinne and Decaestecker 2002).

The estimators are QuaPy's (``quapy.method.aggregative``), fed with posteriors the model already
computed. Intervals bootstrap both the group's cells and the validation cells used for the
correction (refitting the calibration on each validation resample). Where the cultures are known
the bootstrap is two-stage (Davison and Hinkley 1997, section 3.8): cultures, drawn within each fate
for the validation cells, then cells within each drawn culture. Cells of one culture share its
acquisition, and the network's errors move with it, so a bootstrap over cells alone treats a dozen
cultures as hundreds of independent cells and its intervals are too narrow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from quapy.functional import normalize_prevalence
from quapy.method.aggregative import ACC, EMQ, PACC

from nscfate.errors import NscfateError
from nscfate.estimation.calibration import DayCalibration, fit_day_calibrations

METHODS = ("cc", "pcc", "acc", "pacc", "emq")
#: What the interval's bootstrap resamples: cultures then their cells (where known), or cells.
RESAMPLING = ("cultures", "cells")


@dataclass(frozen=True)
class Reference:
    """The validation cells a correction is learned from: their calibrated posteriors and labels."""

    probs: np.ndarray
    labels: np.ndarray

    @property
    def prior(self) -> np.ndarray:
        """Class prevalence of the reference cells (the prior their posteriors reflect)."""
        k = self.probs.shape[1]
        return np.bincount(self.labels, minlength=k) / len(self.labels)


def check_method(method: str) -> None:
    """Fail with one line on an unknown ``quantify.method``."""
    if method not in METHODS:
        raise NscfateError(f"quantify.method={method!r}: expected one of {', '.join(METHODS)}")


def estimate(method: str, probs: np.ndarray, reference: Reference) -> np.ndarray:
    """Estimated class prevalence (K,) of the cells whose calibrated posteriors are ``probs``."""
    check_method(method)
    k = probs.shape[1]
    classes = np.arange(k)
    hard = np.eye(k)[probs.argmax(axis=1)]
    if method == "cc":
        return hard.mean(axis=0)
    if method == "pcc":
        return probs.mean(axis=0)
    if method == "emq":
        prevalence, _ = EMQ.EM(reference.prior, probs)
        return np.asarray(prevalence)
    if method == "acc":
        rates = ACC.getPteCondEstim(classes, reference.labels, reference.probs.argmax(axis=1))
        observed = hard.mean(axis=0)
    else:  # pacc
        rates = PACC.getPteCondEstim(classes, reference.labels, reference.probs)
        observed = probs.mean(axis=0)
    adjusted = ACC.solve_adjustment(rates, observed, method="inversion", solver="minimize")
    return np.asarray(normalize_prevalence(adjusted, method="clip"))


def em_rounds(
    priors: np.ndarray,
    posteriors: np.ndarray,
    weights: np.ndarray | None = None,
    epsilon: float = EMQ.EPSILON,
) -> np.ndarray:
    """QuaPy's ``EMQ.EM`` run on B problems at once (priors B x K, posteriors B x N x K): the same
    E and M steps and the same stopping rule for each problem, which stops as it converges.
    ``weights`` (B x N, counts of a bootstrap draw): problem b is EM on its cells repeated that
    many times, so draws of different sizes share one array.

    Each step is two batched matrix products (no B x N x K temporaries), and only the problems
    still running are computed: one that converged drops out of the arrays.
    """
    prior = np.array(priors, dtype=np.float64)
    zero = prior.prod(axis=1) == 0  # QuaPy smooths a zero prior the same way
    prior[zero] = (prior[zero] + epsilon) / (prior[zero] + epsilon).sum(axis=1, keepdims=True)
    qs = prior.copy()
    running = np.arange(len(prior))  # the problems not converged yet, in the arrays below
    post = np.asarray(posteriors, dtype=np.float64)
    if weights is None:
        weights = np.ones(post.shape[:2])
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum(axis=1, keepdims=True)
    start, current = prior.copy(), qs.copy()
    for step in range(EMQ.MAX_ITER):
        ratio = current / start  # (R, K): E-step weights q / prior
        # M-step: mean over cells of ratio * p / (p . ratio), as QuaPy normalises each cell
        norm = np.matmul(post, ratio[:, :, None])[:, :, 0]  # (R, N)
        new = ratio * np.matmul((w / norm)[:, None, :], post)[:, 0, :]
        done = np.abs(new - current).mean(axis=1) < epsilon if step > 10 else None
        current = new
        if done is None or not done.any():
            continue
        qs[running[done]] = current[done]
        keep = ~done
        if not keep.any():
            return qs
        running, post, w = running[keep], post[keep], w[keep]
        start, current = start[keep], current[keep]
    qs[running] = current
    return qs


@dataclass(frozen=True)
class Interval:
    """A point estimate per class with its bootstrap interval."""

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray


class Resampler:
    """Bootstrap draws of a set of cells: two-stage over cultures (``cultures`` per cell: cultures
    drawn with replacement within each stratum, then cells within each drawn culture) or, without
    cultures, over cells. A draw is an index array; its length varies with the cultures drawn."""

    def __init__(
        self, n: int, cultures: np.ndarray | None = None, strata: np.ndarray | None = None
    ):
        self.n = n
        if cultures is None:
            self.members = None
            return
        _, codes = np.unique(np.asarray(cultures), return_inverse=True)
        # each culture's cells in ascending order, from one sort (not one scan per culture)
        self.members = np.split(
            np.argsort(codes, kind="stable"), np.cumsum(np.bincount(codes))[:-1]
        )
        # a culture's stratum is its cells' majority stratum (a control culture is one fate)
        stratum = np.asarray(strata) if strata is not None else np.zeros(n, dtype=np.int64)
        of_culture = np.array([np.bincount(stratum[m]).argmax() for m in self.members])
        self.strata = [np.flatnonzero(of_culture == s) for s in np.unique(of_culture)]

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """Indices of one bootstrap draw."""
        if self.members is None:
            return rng.integers(0, self.n, self.n)
        picks = []
        for cultures in self.strata:
            for c in cultures[rng.integers(0, len(cultures), len(cultures))]:
                cells = self.members[c]
                picks.append(cells[rng.integers(0, len(cells), len(cells))])
        return np.concatenate(picks)


def bootstrap_references(
    val_logits: np.ndarray,
    val_labels: np.ndarray,
    calibration: DayCalibration,
    n_boot: int,
    seed: int,
    val_cultures: np.ndarray | None = None,
    val_days: np.ndarray | None = None,
) -> list[tuple[DayCalibration, Reference]]:
    """``n_boot`` resamples of the validation cells (over their cultures within each fate, when
    ``val_cultures`` is given), each with its own refitted calibration (all fitted at once, started
    from ``calibration``, the fit on all of them; per day where it has days, ``val_days``)."""
    if n_boot <= 0:
        return []
    rng = np.random.default_rng(seed)
    n = len(val_labels)
    resampler = Resampler(n, val_cultures, val_labels)
    picks = [resampler.draw(rng) for _ in range(n_boot)]
    weights = np.stack([np.bincount(pick, minlength=n) for pick in picks])
    refits = fit_day_calibrations(
        val_logits,
        val_labels,
        val_days,
        weights,
        calibration.method,
        calibration,
        by_day=bool(calibration.days),
    )
    days_of = (lambda pick: None) if val_days is None else (lambda pick: val_days[pick])  # noqa: E731
    return [
        (refit, Reference(refit.probabilities(val_logits[pick], days_of(pick)), val_labels[pick]))
        for refit, pick in zip(refits, picks, strict=True)
    ]


def estimate_with_interval(
    method: str,
    logits: np.ndarray,
    calibration: DayCalibration,
    reference: Reference,
    resamples: list[tuple[DayCalibration, Reference]],
    level: float = 0.95,
    seed: int = 0,
    cultures: np.ndarray | None = None,
    days: np.ndarray | None = None,
) -> Interval:
    """Estimate and percentile interval: each bootstrap round resamples the group's cells (two-stage
    over ``cultures`` when given) and uses one validation resample (its calibration and reference).
    ``days``: each cell's day of culture, for calibrations per day."""
    days = None if days is None else np.asarray(days, dtype=np.float64)
    point = estimate(method, calibration.probabilities(logits, days), reference)
    if not resamples:
        return Interval(point, point.copy(), point.copy())
    rng = np.random.default_rng(seed)
    resampler = Resampler(len(logits), cultures)
    picks = [resampler.draw(rng) for _ in resamples]
    if method == "emq":  # every round at once: EM's Python loop is the cost, not its arithmetic
        weights = np.stack([np.bincount(pick, minlength=len(logits)) for pick in picks])
        probs = np.stack([cal.probabilities(logits, days) for cal, _ in resamples])
        draws = em_rounds(np.stack([ref.prior for _, ref in resamples]), probs, weights)
    else:
        draws = [
            estimate(
                method, cal.probabilities(logits[pick], None if days is None else days[pick]), ref
            )
            for pick, (cal, ref) in zip(picks, resamples, strict=True)
        ]
    alpha = (1 - level) / 2
    low, high = np.quantile(np.stack(draws), [alpha, 1 - alpha], axis=0)
    return Interval(point, np.minimum(low, point), np.maximum(high, point))
