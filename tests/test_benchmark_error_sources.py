"""The error-sources benchmark's summary over several checkpoints."""

import numpy as np
import pandas as pd

from benchmarks.fate_error_sources import number, summarise
from nscfate.data.schema import CLASSES
from nscfate.evaluation.evaluate import LOGIT_COLUMNS


def simulated_cells(
    rng: np.random.Generator,
    split: str,
    condition: str,
    mix: list[float],
    n: int,
    strength: float = 1.2,
    bias: float = 0.0,
) -> pd.DataFrame:
    """``n`` cells of fates drawn from ``mix`` with logits ``strength`` toward the true fate plus
    unit noise (1.2: about 70 % right) and ``bias`` added to the first fate's, on days 1 or 3."""
    labels = rng.choice(3, n, p=mix)
    logits = strength * np.eye(3)[labels] + rng.normal(0, 1.0, (n, 3))
    logits[:, 0] += bias
    names = np.array(CLASSES)
    return pd.DataFrame(logits, columns=LOGIT_COLUMNS).assign(
        label=names[labels],
        predicted=names[logits.argmax(1)],
        split=split,
        condition=condition,
        day=rng.choice([1.0, 3.0], n),
    )


def test_summary_means_each_variant_over_checkpoints():
    line = {"inducer_shift": 1.0, "frac_mae": 0.02, "frac_max_err": 0.05, "test_acc": 0.8}
    runs = [
        [line, line | {"inducer_shift": 0.0, "frac_mae": 0.04}],
        [line | {"frac_mae": 0.06}, line | {"inducer_shift": 0.0, "frac_mae": 0.08}],
    ]
    summary = summarise(runs, ["", "inducer_shift=0"])
    assert set(summary) == {"as trained", "inducer_shift=0"}
    assert summary["as trained"]["frac_mae"] == {"mean": 0.04, "each": [0.02, 0.06]}
    assert summary["inducer_shift=0"]["frac_mae"]["mean"] == 0.06
    assert summary["inducer_shift=0"]["test_acc"]["each"] == [0.8, 0.8]
    assert "inducer_shift" not in summary["as trained"]  # a setting, not a figure


def test_counts_stay_integers_and_scales_floats():
    # a count reaches the generator as the int a config holds: 5.0 would key another data cache
    assert number("5") == 5 and isinstance(number("5"), int)
    assert number("0") == 0 and isinstance(number("0"), int)
    assert number("0.5") == 0.5
    assert number("1.0") == 1.0 and isinstance(number("1.0"), float)


def test_own_test_reference_corrects_a_skewed_mix_from_the_test_split():
    """Calibration and correction refit on the data's test split: with the inducers' errors those
    of the test cells, EM recovers a skewed mix that counting misses."""
    from benchmarks.fate_error_sources import own_test_reference
    from nscfate.estimation import EstimationSettings

    rng = np.random.default_rng(0)

    def cells(split: str, condition: str, mix: list[float], n: int) -> pd.DataFrame:
        return simulated_cells(rng, split, condition, mix, n)

    data = pd.concat(
        [
            cells("test", "control", [1 / 3] * 3, 3000),
            cells("indep:A", "A", [0.7, 0.2, 0.1], 3000),
            cells("indep:B", "B", [0.1, 0.2, 0.7], 3000),
        ],
        ignore_index=True,
    )
    indep = data[data["split"] != "test"]
    counted = (
        pd.crosstab(
            indep["condition"], indep[LOGIT_COLUMNS].to_numpy().argmax(1), normalize="index"
        )
        .to_numpy()
        .round(3)
    )
    true = pd.crosstab(indep["condition"], indep["label"], normalize="index")[list(CLASSES)]
    raw_err = np.abs(counted - true.to_numpy()).mean()
    figures = own_test_reference(EstimationSettings(), data)
    assert raw_err > 0.05  # counting is pulled toward the balanced mix
    assert figures["reference_own_test_frac_mae"] < 0.03
    assert figures["reference_own_test_frac_max_err"] < 0.06


def test_a_runs_synthetic_settings_come_from_all_its_logged_params():
    """The oracle grid and the culture tables regenerate a run's cells from its params: every
    ``data.synthetic.*`` setting counts (layout, crop size, days, confound), not a chosen few."""
    from benchmarks.fate_estimates import run_synth_settings
    from nscfate.data.synthetic import SynthSettings

    params = {
        "data.synthetic.seed": "2",
        "data.synthetic.size": "48",
        "data.synthetic.cells_per_group": "300",
        "data.synthetic.days": "[1, 3]",
        "data.synthetic.batches_per_group": "5",
        "data.synthetic.control_batches_per_group": "20",
        "data.synthetic.confound": "0.5",
        "data.synthetic.inducer_shift": "1.0",
        "data.synthetic.bit_depth": "8",
        "trainer.max_epochs": "40",
    }
    assert run_synth_settings(params) == SynthSettings(
        seed=2,
        size=48,
        cells_per_group=300,
        days=(1, 3),
        control_batches_per_group=20,
        confound=0.5,
    )
    older = {"data.synthetic.seed": "0", "data.synthetic.cells_per_group": "300"}
    assert run_synth_settings(older | {"data.synthetic.control_batches_per_group": "None"}) == (
        SynthSettings(cells_per_group=300)
    )


def test_label_shift_floor_is_the_error_of_cells_that_behave_like_test_cells():
    """The floor rebuilds each inducer condition from test cells: an estimate whose inducer cells
    are read with a bias (toward the first fate) errs well above it, while the floor stays what
    the finite cells of an unbiased plate give."""
    from types import SimpleNamespace

    from benchmarks.fate_error_sources import label_shift_floor
    from nscfate.estimation import EstimationSettings, fit_estimator
    from nscfate.evaluation.evaluate import fate_fractions, fraction_metrics

    rng = np.random.default_rng(1)

    def cells(split: str, condition: str, mix: list[float], n: int, bias: float) -> pd.DataFrame:
        return simulated_cells(rng, split, condition, mix, n, strength=1.5, bias=bias)

    val = cells("val", "control", [1 / 3] * 3, 3000, 0.0)
    settings = EstimationSettings(n_boot=0)
    estimator = fit_estimator(
        settings,
        val[LOGIT_COLUMNS].to_numpy(),
        val["label"].map(CLASSES.index).to_numpy(),
        val_days=val["day"].to_numpy(),
    )
    test = cells("test", "control", [1 / 3] * 3, 3000, 0.0)
    plates = [("A", [0.6, 0.3, 0.1]), ("B", [0.2, 0.2, 0.6])]
    biased = pd.concat(
        [test, *(cells(f"indep:{c}", c, mix, 1200, 0.6) for c, mix in plates)], ignore_index=True
    )
    floor = label_shift_floor(SimpleNamespace(estimator=estimator, cells=biased), rounds=20)
    indep = biased[biased["split"] != "test"]
    actual = fraction_metrics(fate_fractions(indep, estimator))["indep/frac_mae"]
    assert 0.0 < floor["label_shift_floor_frac_mae"] < 0.025
    assert floor["label_shift_floor_frac_max_err"] >= floor["label_shift_floor_frac_mae"]
    assert actual > 2 * floor["label_shift_floor_frac_mae"]  # the bias is not in the floor
