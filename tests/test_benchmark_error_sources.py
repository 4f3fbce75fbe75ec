"""The error-sources benchmark's summary over several checkpoints."""

from benchmarks.fate_error_sources import number, summarise


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
