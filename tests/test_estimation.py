"""Calibration, fate-fraction correction under prior shift with intervals, and the OOD detector,
on simulated logits and features whose truth is known."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from nscfate.errors import NscfateError
from nscfate.estimation import ESTIMATION_KEY, EstimationSettings, FateEstimator, fit_estimator
from nscfate.estimation.calibration import (
    Calibration,
    DayCalibration,
    fit_calibration,
    fit_calibrations,
)
from nscfate.estimation.ood import fit_ood
from nscfate.estimation.quantify import METHODS, Reference, estimate

K = 3


def simulate(prior, n, rng, sharpness=2.0, bias=(0.8, 0.0, -0.8)):
    """Logits of an overconfident, biased classifier: class means ±1 apart, scaled by sharpness."""
    labels = rng.choice(K, size=n, p=prior)
    clean = np.eye(K)[labels] * 1.5 + rng.normal(0, 1.0, (n, K))
    return sharpness * clean + np.asarray(bias), labels


def ece(probs, labels, bins=15):
    conf, hit = probs.max(1), probs.argmax(1) == labels
    idx = np.clip((conf * bins).astype(int), 0, bins - 1)
    return sum(
        abs(conf[idx == b].mean() - hit[idx == b].mean()) * (idx == b).mean()
        for b in range(bins)
        if (idx == b).any()
    )


def weighted_nll_fit(logits, labels, weights, method):
    """The textbook fit, one problem at a time: scipy's L-BFGS-B on the weighted NLL with
    numerical gradients, for the calibration parameters of ``method``."""
    from scipy.optimize import minimize
    from scipy.special import log_softmax

    n_scale, n_bias = (K if method == "vs" else 1), (K if method in ("bcts", "vs") else 0)
    onehot, share = np.eye(K)[labels], weights / weights.sum()

    def nll(theta):
        scale, bias = np.exp(theta[:n_scale]), theta[n_scale:] if n_bias else 0.0
        return -(log_softmax(logits * scale + bias, axis=1) * onehot * share[:, None]).sum()

    theta = minimize(nll, np.zeros(n_scale + n_bias), method="L-BFGS-B", tol=1e-12).x
    bias = theta[n_scale:] - theta[n_scale:].mean() if n_bias else np.zeros(K)
    return np.broadcast_to(np.exp(theta[:n_scale]), (K,)), bias


@pytest.mark.parametrize("method", ["ts", "bcts", "vs"])
def test_bootstrap_refits_at_once_equal_one_fit_per_resample(method):
    """The bootstrap's calibrations (count weights, all problems solved together) are each the
    maximum-likelihood fit of its own resample."""
    rng = np.random.default_rng(3)
    logits, labels = simulate([0.5, 0.3, 0.2], 400, rng)
    weights = np.stack([np.bincount(rng.integers(0, 400, 400), minlength=400) for _ in range(5)])
    weights[0] = 1  # and the plain fit
    fits = fit_calibrations(logits, labels, weights, method)
    for fit, w in zip(fits, weights, strict=True):
        scale, bias = weighted_nll_fit(logits, labels, w.astype(float), method)
        assert np.allclose(fit.scale, scale, atol=1e-5) and np.allclose(fit.bias, bias, atol=1e-5)


@pytest.mark.parametrize("method", ["ts", "bcts", "vs"])
def test_calibration_lowers_ece_on_fresh_cells(method):
    rng = np.random.default_rng(0)
    val_logits, val_labels = simulate([1 / 3] * 3, 3000, rng)
    test_logits, test_labels = simulate([1 / 3] * 3, 3000, rng)
    plain = Calibration.identity(K).probabilities(test_logits)
    fitted = fit_calibration(val_logits, val_labels, method)
    calibrated = fitted.probabilities(test_logits)
    assert ece(plain, test_labels) > 0.05
    assert ece(calibrated, test_labels) < 0.025
    assert np.allclose(calibrated.sum(1), 1)
    if method == "ts":
        assert fitted.temperature > 1.5  # the simulated classifier is 2x overconfident
    assert Calibration.from_state(fitted.state()) == fitted


def test_unknown_methods_are_one_line_errors():
    with pytest.raises(NscfateError, match="calibration.method='platt': expected one of"):
        fit_calibration(np.zeros((4, K)), np.arange(4) % K, "platt")
    ref = Reference(np.full((3, K), 1 / K), np.arange(3))
    with pytest.raises(NscfateError, match="quantify.method='magic': expected one of"):
        estimate("magic", np.full((3, K), 1 / K), ref)


def test_corrected_methods_beat_counting_under_prior_shift():
    rng = np.random.default_rng(1)
    val_logits, val_labels = simulate([1 / 3] * 3, 3000, rng)
    calibration = fit_calibration(val_logits, val_labels, "bcts")
    reference = Reference(calibration.probabilities(val_logits), val_labels)
    shifted = np.array([0.65, 0.2, 0.15])
    logits, labels = simulate(shifted, 4000, rng)
    truth = np.bincount(labels, minlength=K) / len(labels)
    probs = calibration.probabilities(logits)
    errors = {m: np.abs(estimate(m, probs, reference) - truth).max() for m in METHODS}
    assert errors["cc"] > 0.05  # counting is pulled toward the balanced training mix
    for corrected in ("acc", "pacc", "emq"):
        assert errors[corrected] < 0.03, errors
        assert errors[corrected] < errors["cc"] / 2


def test_intervals_cover_the_truth_and_state_round_trips():
    rng = np.random.default_rng(2)
    val_logits, val_labels = simulate([1 / 3] * 3, 1500, rng)
    # the simulated classifier has class biases: only a calibration with class biases removes them
    settings = EstimationSettings(calibration="bcts", n_boot=100)
    estimator = fit_estimator(settings, val_logits, val_labels)
    covered, total, widths = 0, 0, []
    for trial in range(10):
        prior = rng.dirichlet([2, 2, 2])
        logits, labels = simulate(prior, 600, rng)
        truth = np.bincount(labels, minlength=K) / len(labels)
        interval = estimator.fractions(logits, seed=trial)
        assert np.all(interval.low <= interval.estimate + 1e-12)
        assert np.all(interval.estimate <= interval.high + 1e-12)
        covered += int(np.sum((interval.low <= truth) & (truth <= interval.high)))
        total += K
        widths.append(np.mean(interval.high - interval.low) / 2)
    assert covered / total >= 0.8
    assert 0.005 < np.mean(widths) < 0.1
    # what a checkpoint holds reloads with weights_only and gives the same answer
    buffer = io.BytesIO()
    torch.save({ESTIMATION_KEY: estimator.state()}, buffer)
    buffer.seek(0)
    again = FateEstimator.from_state(torch.load(buffer, weights_only=True)[ESTIMATION_KEY])
    logits, _ = simulate([0.2, 0.2, 0.6], 300, rng)
    first, second = estimator.fractions(logits, seed=5), again.fractions(logits, seed=5)
    assert np.allclose(first.estimate, second.estimate)
    assert np.allclose(first.low, second.low) and np.allclose(first.high, second.high)


def simulate_days(n_per_day, rng, prior=(1 / 3,) * 3):
    """Cells of days 1 and 7: an overconfident network on day 1 (classes barely apart, logits
    sharp) and an underconfident one on day 7 (classes far apart, logits flat), as trained
    networks are on early and late cultures."""
    logits, labels, days = [], [], []
    for day, separation, sharpness in ((1.0, 0.4, 3.0), (7.0, 3.0, 0.6)):
        y = rng.choice(K, size=n_per_day, p=prior)
        logits.append(sharpness * (np.eye(K)[y] * separation + rng.normal(0, 1.0, (n_per_day, K))))
        labels.append(y)
        days.append(np.full(n_per_day, day))
    return np.concatenate(logits), np.concatenate(labels), np.concatenate(days)


@pytest.mark.parametrize("method", ["ts", "bcts"])
def test_a_calibration_per_day_fixes_what_one_temperature_cannot(method):
    """One temperature over both days leaves day 1 overconfident and day 7 underconfident; a map
    per day calibrates each, and so the whole set, on fresh cells."""
    rng = np.random.default_rng(7)
    val_logits, val_labels, val_days = simulate_days(1500, rng)
    logits, labels, days = simulate_days(4000, rng)
    pooled = fit_estimator(
        EstimationSettings(calibration=method, calibrate_by_day=False, n_boot=0),
        val_logits,
        val_labels,
        val_days=val_days,
    )
    per_day = fit_estimator(
        EstimationSettings(calibration=method, n_boot=0), val_logits, val_labels, val_days=val_days
    )
    assert not pooled.calibration.days and [d for d, _ in per_day.calibration.days] == [1.0, 7.0]
    for day in (1.0, 7.0):
        on = days == day
        assert ece(pooled.probabilities(logits, days)[on], labels[on]) > 0.08
        assert ece(per_day.probabilities(logits, days)[on], labels[on]) < 0.03
    assert ece(per_day.probabilities(logits, days), labels) < 0.02
    assert ece(pooled.probabilities(logits, days), labels) > 2 * ece(
        per_day.probabilities(logits, days), labels
    )
    # a cell of an unknown or uncalibrated day goes through the pooled map
    unknown = np.full(len(days), np.nan)
    assert np.allclose(per_day.probabilities(logits, unknown), pooled.probabilities(logits))
    assert np.allclose(
        per_day.probabilities(logits, np.full(len(days), 3.0)), pooled.probabilities(logits)
    )


def test_days_with_few_validation_cells_keep_the_pooled_map_and_state_round_trips():
    rng = np.random.default_rng(8)
    val_logits, val_labels, val_days = simulate_days(600, rng)
    rare = (val_days == 7.0) & (val_labels == 2)
    keep = ~rare | (np.cumsum(rare) <= 20)  # day 7 keeps 20 cells of fate 2: too few for a map
    estimator = fit_estimator(
        EstimationSettings(n_boot=50), val_logits[keep], val_labels[keep], val_days=val_days[keep]
    )
    assert [d for d, _ in estimator.calibration.days] == [1.0]
    # the bootstrap refits every day's map on each resample, from the validation cells' own days
    logits, _, days = simulate_days(300, rng, prior=(0.2, 0.2, 0.6))
    first = estimator.fractions(logits, seed=3, days=days)
    buffer = io.BytesIO()
    torch.save({ESTIMATION_KEY: estimator.state()}, buffer)
    buffer.seek(0)
    again = FateEstimator.from_state(torch.load(buffer, weights_only=True)[ESTIMATION_KEY])
    assert np.array_equal(again.val_days, estimator.val_days)
    assert again.calibration == estimator.calibration
    second = again.fractions(logits, seed=3, days=days)
    assert np.allclose(first.low, second.low) and np.allclose(first.high, second.high)
    refits = [cal for cal, _ in estimator._resamples]
    assert all([d for d, _ in cal.days] == [1.0] for cal in refits)
    assert len({cal.days[0][1] for cal in refits}) > 40  # each resample its own day-1 map
    # a state from before days (one map, no validation days) loads as a pooled calibration
    old = estimator.state() | {"calibration": estimator.calibration.pooled.state()}
    del old["val_days"]
    legacy = FateEstimator.from_state(old)
    assert legacy.calibration == DayCalibration(estimator.calibration.pooled)
    assert np.allclose(
        legacy.probabilities(logits, days), estimator.calibration.pooled.probabilities(logits)
    )


def test_ood_detector_flags_its_rate_and_separates_far_features():
    rng = np.random.default_rng(3)
    means = rng.normal(0, 3, (K, 16))

    def features(n):
        labels = rng.integers(0, K, n)
        return means[labels] + rng.normal(0, 1, (n, 16)), labels

    train_f, train_y = features(4000)
    val_f, _ = features(2000)
    detector = fit_ood(train_f, train_y, val_f, false_alarm_rate=0.05)
    test_f, _ = features(4000)
    rate = detector.flags(detector.scores(test_f)).mean()
    assert abs(rate - 0.05) < 0.015
    far = rng.normal(0, 1, (500, 16)) * 6
    assert detector.flags(detector.scores(far)).mean() > 0.9
    with pytest.raises(NscfateError, match="ood.false_alarm_rate=1.5"):
        fit_ood(train_f, train_y, val_f, false_alarm_rate=1.5)


def test_batched_em_equals_quapys_em_round_by_round():
    from quapy.method.aggregative import EMQ

    from nscfate.estimation.quantify import em_rounds

    rng = np.random.default_rng(4)
    priors = rng.dirichlet([3, 3, 3], 6)
    priors[0] = [0.5, 0.5, 0.0]  # a class missing from the reference: QuaPy smooths it
    posteriors = rng.dirichlet([1, 1, 1], (6, 80))
    posteriors[1] = np.full((80, 3), 1 / 3)  # a model that knows nothing: EM runs to its limit
    batched = em_rounds(priors, posteriors)
    for b in range(6):
        expected, _ = EMQ.EM(priors[b], posteriors[b])
        assert np.allclose(batched[b], expected, atol=1e-12), b


def test_the_oracle_through_the_runs_correction_recovers_the_inducer_fractions():
    """The latent oracle's posteriors, calibrated on validation and corrected with EM, land close to
    the generator's inducer proportions: the fraction error a model that saw the true morphology
    would leave, which a run reports next to its own (``oracle/frac_mae``)."""
    from nscfate.data.oracle import fit_oracle
    from nscfate.data.splits import SplitSpec, make_split
    from nscfate.data.synthetic import SynthSettings, describe
    from nscfate.estimation import EstimationSettings
    from nscfate.evaluation.evaluate import oracle_fraction_errors

    settings = SynthSettings(cells_per_group=300)  # latents only: no pixels are rendered
    index = describe(settings)
    conditions = tuple(name for name, _ in settings.conditions)
    split = make_split(index, SplitSpec(seed=0, holdout_conditions=conditions))
    oracle = fit_oracle(index, split)
    # the oracle's posteriors are calibrated already: one temperature (bcts would fit class biases
    # to a few validation cultures)
    corrected = oracle_fraction_errors(oracle, index, split, EstimationSettings(calibration="ts"))
    counted = oracle_fraction_errors(oracle, index, split, EstimationSettings(quantify="cc"))
    assert corrected["frac_mae"] < 0.01 and corrected["frac_max_err"] < 0.02
    assert counted["frac_mae"] > 3 * corrected["frac_mae"]  # the correction is what gets it there


def test_batched_em_with_bootstrap_weights_equals_em_on_the_drawn_cells():
    from quapy.method.aggregative import EMQ

    from nscfate.estimation.quantify import em_rounds

    rng = np.random.default_rng(6)
    priors = rng.dirichlet([3, 3, 3], 4)
    posteriors = rng.dirichlet([1, 1, 1], (4, 50))
    picks = [rng.integers(0, 50, 50 + 10 * b) for b in range(4)]  # draws of different sizes
    weights = np.stack([np.bincount(p, minlength=50) for p in picks])
    batched = em_rounds(priors, posteriors, weights)
    for b in range(4):
        expected, _ = EMQ.EM(priors[b], posteriors[b][picks[b]])
        assert np.allclose(batched[b], expected, atol=1e-10), b


def test_culture_draws_keep_whole_cultures_within_their_fate():
    from nscfate.estimation.quantify import Resampler

    cultures = np.repeat(np.arange(6), [10, 20, 30, 10, 20, 30])
    labels = np.repeat([0, 0, 0, 1, 1, 2], [10, 20, 30, 10, 20, 30])
    resampler = Resampler(len(labels), cultures, labels)
    sizes = np.bincount(cultures)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(20):
        pick = resampler.draw(rng)
        times = np.bincount(cultures[pick], minlength=6) / sizes  # how often each was drawn
        assert np.allclose(times, times.round())  # whole cultures: all their cells, each time
        # as many cultures per fate as the fate has: 3 of fate 0, 2 of fate 1, 1 of fate 2
        assert times[:3].sum() == 3 and times[3:5].sum() == 2 and times[5] == 1
        seen |= set(np.flatnonzero(times > 1))
        assert len(np.unique(pick)) < len(pick)  # cells are drawn with replacement too
    assert seen  # and cultures are drawn with replacement
    assert len(Resampler(7).draw(rng)) == 7  # no cultures: a draw over cells


def clustered(rng, labels_per_culture, spread=0.8):
    """Logits whose errors move with the culture: each culture adds its own class bias."""
    logits = [
        2.0 * np.eye(K)[y] + rng.normal(0, spread, K) + rng.normal(0, 1.0, (len(y), K))
        for y in labels_per_culture
    ]
    cultures = np.repeat(np.arange(len(logits)), [len(y) for y in labels_per_culture])
    return np.concatenate(logits), np.concatenate(labels_per_culture), cultures


def test_intervals_over_cultures_cover_when_errors_move_with_the_culture():
    """The demo's design: 4 validation cultures per fate, one fate each, and a condition of 20 mixed
    cultures. A bootstrap over cells treats them as independent cells and misses the truth in most
    intervals; the two-stage bootstrap over cultures covers it."""
    coverage = {}
    for resample in ("cells", "cultures"):
        hits = []
        for trial in range(10):
            rng = np.random.default_rng(100 + trial)
            val = clustered(rng, [np.full(40, k) for k in range(K) for _ in range(4)])
            target = clustered(rng, [rng.choice(K, 40, p=[0.5, 0.3, 0.2]) for _ in range(20)])
            settings = EstimationSettings(n_boot=100, resample=resample)
            estimator = fit_estimator(settings, val[0], val[1], val_cultures=val[2])
            interval = estimator.fractions(target[0], seed=trial, cultures=target[2])
            truth = np.bincount(target[1], minlength=K) / len(target[1])
            hits += list((interval.low <= truth) & (truth <= interval.high))
        coverage[resample] = np.mean(hits)
    assert coverage["cells"] < 0.6, coverage
    assert coverage["cultures"] >= 0.85, coverage


def test_validation_cultures_round_trip_and_bad_resampling_is_one_line():
    rng = np.random.default_rng(7)
    val = clustered(rng, [np.full(30, k) for k in range(K) for _ in range(2)])
    names = np.array([f"plate-{c}" for c in val[2]])  # culture ids may be any labels
    estimator = fit_estimator(EstimationSettings(n_boot=50), val[0], val[1], val_cultures=names)
    buffer = io.BytesIO()
    torch.save({ESTIMATION_KEY: estimator.state()}, buffer)
    buffer.seek(0)
    again = FateEstimator.from_state(torch.load(buffer, weights_only=True)[ESTIMATION_KEY])
    assert np.array_equal(again.val_cultures, estimator.val_cultures)
    target = clustered(rng, [rng.choice(K, 30) for _ in range(5)])
    first = estimator.fractions(target[0], seed=1, cultures=target[2])
    second = again.fractions(target[0], seed=1, cultures=target[2])
    assert np.allclose(first.low, second.low) and np.allclose(first.high, second.high)
    with pytest.raises(NscfateError, match="quantify.resample='plates': expected one of"):
        EstimationSettings(resample="plates").check()


def test_a_groups_cultures_are_resampled_unless_its_folders_sort_cells_by_fate():
    import pandas as pd

    from nscfate.evaluation.evaluate import sampled_cultures

    wells = pd.DataFrame({"batch": ["NT3-d1-b0", "NT3-d1-b1", "plate2/B03"]})
    assert sampled_cultures(wells).tolist() == ["NT3-d1-b0", "NT3-d1-b1", "plate2/B03"]
    # <class>/[day]/[condition] folders (folder ingest): each folder holds one fate by design
    sorted_by_fate = pd.DataFrame({"batch": ["neuron/day3/NT3", "astrocytes/day3/NT3"]})
    assert sampled_cultures(sorted_by_fate) is None
    assert sampled_cultures(pd.DataFrame({"source": ["x.png"]})) is None


def test_known_labels_decide_whether_a_groups_cultures_sort_cells_by_fate():
    """An IDEAS export names cultures ``a_1d1``, ``n_1d1`` (one fate each): no fate name in the
    path, but the labels show it. A plate folder named ``1`` (also an alias of a fate) with mixed
    wells is a sample of cultures."""
    import pandas as pd

    from nscfate.evaluation.evaluate import sampled_cultures

    ideas = pd.DataFrame({"batch": ["a_1d1", "a_1d1", "n_1d1", "o_1d2"]})
    ideas["label"] = ["astrocyte", "astrocyte", "neuron", "oligodendrocyte"]
    assert sampled_cultures(ideas) is None
    plate = pd.DataFrame({"batch": ["plate/1", "plate/1", "plate/2", "plate/2"]})
    plate["label"] = ["neuron", "astrocyte", "neuron", "oligodendrocyte"]
    assert sampled_cultures(plate).tolist() == ["plate/1", "plate/1", "plate/2", "plate/2"]
    # one fate in the whole group says nothing about how cultures were made: the names decide
    single = pd.DataFrame({"batch": ["w1", "w2"], "label": ["neuron", "neuron"]})
    assert sampled_cultures(single).tolist() == ["w1", "w2"]
    unlabelled = ideas.assign(label="")
    assert sampled_cultures(unlabelled).tolist() == ["a_1d1", "a_1d1", "n_1d1", "o_1d2"]


def test_predict_warns_about_a_culture_whose_crops_are_mostly_out_of_distribution():
    """Seed 3 of the demo: one test culture with 25 of its 60 cells flagged while the others flag
    under 1 %. Its own warning names it; chance flags at the 1 % rate and small cultures do not."""
    import pandas as pd

    from nscfate.tracking.predict import culture_alarms

    rng = np.random.default_rng(0)
    plate = pd.DataFrame({"batch": np.repeat([f"w{i}" for i in range(12)], 60)})
    plate["ood"] = rng.random(len(plate)) < 0.01
    plate.loc[plate["batch"] == "w7", "ood"] = np.arange(60) < 25
    plate["ood_score"] = 1.0
    alarms = culture_alarms(plate)
    assert len(alarms) == 1 and "'w7': 42% of its 60 crops" in alarms[0]
    small = pd.DataFrame({"batch": ["a"] * 5 + ["b"] * 40, "ood": [True] * 5 + [False] * 40})
    assert culture_alarms(small.assign(ood_score=1.0)) == []  # 5 cells: not judged
    assert culture_alarms(plate.drop(columns="batch")) == []
    assert culture_alarms(plate.assign(ood=True)) == []  # the plate-wide alarm says it already
    assert culture_alarms(plate.assign(ood_score=np.nan)) == []  # no detector
