"""The synthetic bright-field generator and its oracle: layout, determinism, difficulty, confound."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from nscfate.data.normalize import border_median, per_image
from nscfate.data.oracle import (
    grouped_cv_accuracy,
    mean_intensity_accuracy,
    oracle_accuracy_by_day,
)
from nscfate.data.schema import ACQUISITION_PREFIX, CLASSES, CONTROL, LATENT_PREFIX
from nscfate.data.synthetic import (
    DEFAULT_CONDITIONS,
    GENERATOR_VERSION,
    SynthSettings,
    describe,
    generate,
    maturity,
)
from nscfate.errors import NscfateError

SMALL = SynthSettings(seed=7, cells_per_group=12, batches_per_group=3, days=(1, 7))


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, pd.DataFrame]:
    return generate(SMALL)


@pytest.fixture(scope="module")
def confounded() -> tuple[SynthSettings, np.ndarray, pd.DataFrame]:
    """Control cultures only, maximal brightness confound, 10 batches per (class, day)."""
    s = SynthSettings(
        seed=0, cells_per_group=200, batches_per_group=10, confound=1.0, conditions=()
    )
    return (s, *generate(s))


def _cell_mask(images: np.ndarray, white_level: int) -> np.ndarray:
    """Pixels clearly off the background: |normalised deviation| above a quarter of the spread."""
    return np.abs(per_image(images.astype(np.float32) / white_level)) > 0.25


def test_same_settings_give_byte_identical_output(small) -> None:
    images, index = small
    again_images, again_index = generate(SMALL)
    assert images.tobytes() == again_images.tobytes()
    pd.testing.assert_frame_equal(index, again_index)
    other, _ = generate(SynthSettings(seed=8, cells_per_group=12, batches_per_group=3, days=(1, 7)))
    assert other.shape == images.shape and np.mean(other != images) > 0.5


def test_a_new_generator_version_gets_a_new_store(monkeypatch) -> None:
    """The built-in store is cached by a folder name that must change with the generator."""
    import nscfate.data.synthetic as synthetic
    from nscfate.data.synthetic_cache import synthetic_slug

    settings = {"seed": 0, "cells_per_group": 12}
    before = synthetic_slug(settings)
    assert synthetic_slug(settings) == before and synthetic_slug({**settings, "seed": 1}) != before
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", GENERATOR_VERSION + ".next")
    assert synthetic_slug(settings) != before


def test_index_columns_and_control_groups(small) -> None:
    images, index = small
    cols = list(index.columns)
    assert cols[:5] == ["label", "day", "condition", "batch", "source"]
    lat = [c for c in cols if c.startswith(LATENT_PREFIX)]
    acq = [c for c in cols if c.startswith(ACQUISITION_PREFIX)]
    assert cols == cols[:5] + lat + acq
    assert {"lat_maturity", "lat_radius_um", "lat_n_processes", "lat_granularity"} <= set(lat)
    assert {"acq_level", "acq_gain", "acq_defocus_um"} <= set(acq)
    assert all(index[c].dtype == np.float64 for c in lat + acq)
    assert index["day"].dtype == np.float64 and index["source"].is_unique
    assert len(images) == len(index) and images.shape[1:] == (64, 64) and images.dtype == np.uint8
    control = index[index["condition"] == CONTROL]
    counts = control.groupby(["label", "day"]).size()
    assert len(counts) == len(CLASSES) * len(SMALL.days) and set(counts) == {12}
    per_batch = control.groupby("batch").agg(labels=("label", "nunique"), days=("day", "nunique"))
    assert (per_batch == 1).all().all()  # a directed-differentiation culture: one fate, one day
    assert control.groupby(["label", "day"])["batch"].nunique().eq(3).all()


def test_inducer_conditions_follow_their_proportions_exactly(small) -> None:
    _, index = small
    inducers = index[index["condition"] != CONTROL]
    assert set(inducers["condition"]) == set(DEFAULT_CONDITIONS)
    for (name, day), part in inducers.groupby(["condition", "day"]):
        assert len(part) == 12 and part["batch"].nunique() == 3
        for label, p in DEFAULT_CONDITIONS[name].items():
            assert abs((part["label"] == label).sum() - p * 12) < 1, (name, day, label)
        assert part.groupby("batch")["label"].nunique().max() >= 2  # mixed cultures
    assert not set(inducers["batch"]) & set(index.loc[index["condition"] == CONTROL, "batch"])


def test_background_level_and_bit_depths() -> None:
    for bit_depth, dtype in ((8, np.uint8), (16, np.uint16)):
        s = SynthSettings(seed=1, cells_per_group=6, days=(3,), bit_depth=bit_depth, conditions=())
        images, index = generate(s)
        assert images.dtype == dtype and images.max() <= s.white_level()
        offset = 0 if bit_depth == 8 else 100
        expected = offset + index["acq_level"].to_numpy() * (s.white_level() - offset)
        # the border is flat background at the batch's level (within noise and gradient)
        assert (
            np.abs(border_median(images.astype(np.float64)) - expected).max()
            < 0.02 * s.white_level()
        )
    assert SynthSettings(bit_depth=16).white_level() == 4095


def test_faint_cell_on_flat_background_like_real_crops(small) -> None:
    images, index = small
    x = images.astype(np.float64)
    noise = np.median(np.std(x[:, :4, :], axis=(1, 2)))
    assert 0.5 < noise < 3  # ~1 grey level of camera noise at 8 bit, as in the real crops
    centre = x[:, 22:42, 22:42].std(axis=(1, 2))
    assert 2 < np.median(centre) < 30  # faint cell: contrast std of a few grey levels
    extent = _cell_mask(images, 255).mean(axis=(1, 2)) * 64 * 64
    diameter = 2 * np.sqrt(np.median(extent) / math.pi)
    assert 10 < diameter < 28  # the cell occupies ~15-25 px of the 64 px crop


@pytest.mark.parametrize("size", [48, 96])
def test_other_sizes_scale_the_cell(size: int) -> None:
    s = SynthSettings(seed=2, size=size, cells_per_group=20, days=(5,), conditions=())
    images, index = generate(s)
    assert images.shape == (len(index), size, size)
    ref = generate(SynthSettings(seed=2, cells_per_group=20, days=(5,), conditions=()))[0]
    frac = _cell_mask(images, 255).mean()
    ref_frac = _cell_mask(ref, 255).mean()
    assert 0.7 < frac / ref_frac < 1.4  # same fraction of the crop at any size


def _radial_features(images: np.ndarray, white_level: int) -> np.ndarray:
    """Rotation-invariant hand-made descriptors of normalised crops: ring statistics, texture, area."""
    x = per_image(images.astype(np.float32) / white_level)
    n = x.shape[-1]
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    r = np.hypot(yy, xx) * 64 / n
    feats = []
    for lo, hi in zip([0, 3, 6, 9, 12, 16, 22], [3, 6, 9, 12, 16, 22, 99], strict=True):
        ring = x[:, (r >= lo) & (r < hi)]
        feats += [ring.mean(1), np.abs(ring).mean(1), ring.std(1)]
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    feats += [np.abs(lap).mean((1, 2)), (np.abs(x) > 0.25).mean((1, 2))]
    return np.stack(feats, 1)


def test_rendered_images_show_the_class_morphology(confounded) -> None:
    """Even crude image features + logistic regression separate the fates, better as cells mature."""
    s, images, index = confounded
    feats = _radial_features(images, s.white_level())
    acc = {}
    for day in (1.0, 7.0):
        rows = (index["day"] == day).to_numpy()
        y, groups = index["label"].to_numpy()[rows], index["batch"].to_numpy()[rows]
        acc[day] = grouped_cv_accuracy(feats[rows], y, groups, seed=0)
    assert acc[7.0] >= 0.75
    assert acc[7.0] - acc[1.0] >= 0.2


def test_oracle_is_hard_at_day1_and_easy_at_day7(confounded) -> None:
    _, _, index = confounded
    acc = oracle_accuracy_by_day(index)
    assert list(acc) == [1.0, 3.0, 5.0, 7.0]
    assert 0.68 <= acc[1.0] <= 0.87
    assert acc[7.0] > 0.95
    days = list(acc.values())
    assert all(b >= a - 0.01 for a, b in zip(days, days[1:], strict=False))


def test_no_class_signal_at_plating() -> None:
    _, index = generate(SynthSettings(seed=4, cells_per_group=150, days=(0,), conditions=()))
    assert oracle_accuracy_by_day(index)[0.0] < 0.45  # m(0) = 0: every class is an NSC
    assert maturity(0.0) == 0 and math.isclose(float(maturity(3.0)), 1 - math.exp(-1))


def test_brightness_confound_is_real_and_cured_by_normalisation(confounded) -> None:
    s, images, index = confounded
    raw = mean_intensity_accuracy(images, index, s.white_level(), normalize=False)
    normalised = mean_intensity_accuracy(images, index, s.white_level(), normalize=True)
    assert raw >= 0.6
    assert normalised <= 0.45


def test_without_confound_brightness_says_little() -> None:
    s = SynthSettings(seed=0, cells_per_group=60, batches_per_group=10, confound=0.0, conditions=())
    images, index = generate(s)
    assert mean_intensity_accuracy(images, index, s.white_level(), normalize=False) < 0.5


def test_settings_accept_config_values_and_reject_bad_ones() -> None:
    s = SynthSettings(days=[1, 3], conditions={"X": {"astro": 0.5, "n": 0.5}})
    assert s.days == (1.0, 3.0) and s.conditions == (("X", (("astrocyte", 0.5), ("neuron", 0.5))),)
    assert hash(s) == hash(SynthSettings(days=(1, 3), conditions=s.conditions))
    bad = [
        {"confound": 1.5},
        {"bit_depth": 12},
        {"size": 8},
        {"days": (1, 1)},
        {"conditions": {"X": {"astrocyte": 0.5}}},
        {"conditions": {"X": {"microglia": 1.0}}},
        {"conditions": {CONTROL: {"neuron": 1.0}}},
    ]
    for kwargs in bad:
        with pytest.raises(NscfateError):
            SynthSettings(**kwargs)


def test_oracle_rejects_missing_inputs(small) -> None:
    images, index = small
    with pytest.raises(NscfateError, match="condition"):
        oracle_accuracy_by_day(index, condition="nope")
    with pytest.raises(NscfateError, match="lat_"):
        oracle_accuracy_by_day(index.drop(columns=[c for c in index if c.startswith("lat_")]))
    with pytest.raises(NscfateError, match="images"):
        mean_intensity_accuracy(images[:-1], index, 255, normalize=True)


def test_progress_bar_goes_to_stderr(capsys) -> None:
    generate(SynthSettings(cells_per_group=2, days=(1,), conditions=()), progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "cell" in captured.err


def test_inducer_shift_scales_the_inducer_microscope_and_keeps_the_default_store() -> None:
    """``inducer_shift=0`` images the inducer conditions like control (the same cells otherwise);
    the default (1) leaves every byte and the cached store's folder name as they were."""
    from nscfate.data.synthetic import describe
    from nscfate.data.synthetic_cache import synthetic_slug

    def inducer_optics(shift: float) -> pd.DataFrame:
        index = describe(SynthSettings(cells_per_group=60, inducer_shift=shift))
        inducers = index[index["condition"] != CONTROL]
        return inducers.rename(columns=lambda c: c.removeprefix(ACQUISITION_PREFIX))

    shifted, unshifted = inducer_optics(1.0), inducer_optics(0.0)
    gap = shifted["defocus_um"].abs().mean() - unshifted["defocus_um"].abs().mean()
    assert 0.8 < gap < 1.2  # the shift adds about 1 um of defocus
    assert (shifted["na"] < unshifted["na"]).all()
    assert (shifted["full_well"] < unshifted["full_well"]).all()
    settings = {"seed": 0, "cells_per_group": 12}
    assert synthetic_slug(settings | {"inducer_shift": 1.0}) == synthetic_slug(settings)
    assert synthetic_slug(settings | {"inducer_shift": 0.0}) != synthetic_slug(settings)
    with pytest.raises(NscfateError, match="inducer_shift must be in"):
        SynthSettings(inducer_shift=-1)


def test_control_cultures_change_the_training_layout_and_keep_the_inducer_cells() -> None:
    """``control_batches_per_group`` spreads the control cells over more cultures; the inducer
    conditions' cells (cultures, morphology, acquisition, pixels) stay those of the default layout,
    so a recipe with more training cultures is judged on the same benchmark."""
    from nscfate.data.synthetic_cache import synthetic_slug

    # 3 fates x 128 control cells: the inducer rows start on a rendering chunk, so pixels match too.
    base = SynthSettings(seed=3, cells_per_group=128, days=(1,))
    spread = SynthSettings(seed=3, cells_per_group=128, days=(1,), control_batches_per_group=32)
    (images, index), (images2, index2) = generate(base), generate(spread)
    inducer = (index["condition"] != CONTROL).to_numpy()
    pd.testing.assert_frame_equal(index[inducer], index2[inducer])
    assert images[inducer].tobytes() == images2[inducer].tobytes()
    control = index2[~inducer]
    assert control.groupby(["label", "day"])["batch"].nunique().eq(32).all()
    assert index[~inducer].groupby(["label", "day"])["batch"].nunique().eq(5).all()
    assert (control["label"] == index[~inducer]["label"]).all()
    settings = {"seed": 0, "cells_per_group": 12}
    assert synthetic_slug(settings | {"control_batches_per_group": None}) == synthetic_slug(
        settings
    )
    assert synthetic_slug(settings | {"control_batches_per_group": 6}) != synthetic_slug(settings)
    with pytest.raises(NscfateError, match="control_batches_per_group must be null or between"):
        SynthSettings(cells_per_group=12, control_batches_per_group=13)


def test_control_cells_grow_the_control_cultures_and_keep_the_inducer_cells() -> None:
    """``control_cells_per_group`` adds control cultures (larger validation and test splits); the
    inducer conditions' cells stay those of the dataset without it, pixels included, even where
    their first rendering chunk also held control cells (100 control cells a group do not fill
    whole chunks)."""
    from nscfate.data.synthetic_cache import synthetic_slug

    base = SynthSettings(seed=3, cells_per_group=100, days=(1,), control_batches_per_group=10)
    more = replace(base, control_cells_per_group=250)
    (images, index), (images2, index2) = generate(base), generate(more)
    inducer, inducer2 = ((ix["condition"] != CONTROL).to_numpy() for ix in (index, index2))
    columns = [c for c in index.columns if c != "source"]  # a cell's source names its row
    pd.testing.assert_frame_equal(
        index.loc[inducer, columns].reset_index(drop=True),
        index2.loc[inducer2, columns].reset_index(drop=True),
    )
    assert images[inducer].tobytes() == images2[inducer2].tobytes()
    control = index2[~inducer2]
    assert control.groupby(["label", "day"]).size().eq(250).all()
    assert control.groupby(["label", "day"])["batch"].nunique().eq(10).all()
    assert index2["source"].is_unique and len(images2) == len(index2) == 750 + inducer.sum()
    assert len(np.unique(images2[~inducer2].reshape(750, -1), axis=0)) == 750
    pd.testing.assert_frame_equal(describe(more), index2)
    settings = {"seed": 0, "cells_per_group": 12}
    assert synthetic_slug(settings | {"control_cells_per_group": None}) == synthetic_slug(settings)
    assert synthetic_slug(settings | {"control_cells_per_group": 24}) != synthetic_slug(settings)
    with pytest.raises(NscfateError, match="control_cells_per_group must be null or at least"):
        SynthSettings(cells_per_group=12, control_cells_per_group=4)
