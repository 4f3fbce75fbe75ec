"""Splits: grouped by batch, stratified by class and day, seeded, conditions held out, digested."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from nscfate.data.splits import SplitSpec, make_split, split_counts, split_digest
from nscfate.errors import NscfateError


def _index(batches_per_group: int = 6, cells: int = 5) -> pd.DataFrame:
    rows = []
    for label, day, b in itertools.product(
        ("astrocyte", "oligodendrocyte", "neuron"), (1, 7), range(batches_per_group)
    ):
        for c in range(cells):
            rows.append(
                {
                    "label": label,
                    "day": float(day),
                    "condition": "control",
                    "batch": f"{label}-d{day}-b{b}",
                    "source": f"{label}/{day}/{b}/{c}.png",
                }
            )
    for b in range(3):
        for c, label in enumerate(("neuron", "neuron", "astrocyte")):
            rows.append(
                {
                    "label": label,
                    "day": 1.0,
                    "condition": "NT3",
                    "batch": f"NT3-b{b}",
                    "source": f"nt3/{b}/{c}.png",
                }
            )
    return pd.DataFrame(rows)


def test_no_batch_is_on_two_sides():
    index = _index()
    split = make_split(index, SplitSpec(seed=1, holdout_conditions=("NT3",)))
    sides = index.assign(split=split).groupby("batch")["split"].nunique()
    assert (sides == 1).all()


def test_every_class_and_day_is_in_every_split():
    index = _index()
    split = make_split(index, SplitSpec(seed=2))
    cells = index.assign(split=split)
    for part in ("train", "val", "test"):
        got = set(
            zip(cells[cells.split == part].label, cells[cells.split == part].day, strict=True)
        )
        assert got == {
            (c, d) for c in ("astrocyte", "oligodendrocyte", "neuron") for d in (1.0, 7.0)
        }
    fractions = cells[cells.condition == "control"].split.value_counts(normalize=True)
    assert fractions["train"] == pytest.approx(4 / 6, abs=0.01)


def test_held_out_conditions_stay_whole():
    index = _index()
    split = make_split(index, SplitSpec(holdout_conditions=("NT3",)))
    assert (split[index.condition == "NT3"] == "indep:NT3").all()
    assert not split[index.condition == "control"].str.startswith("indep").any()
    assert split_counts(index, split)["indep:NT3"] == {"astrocyte": 3, "neuron": 6}


def test_seed_decides_and_digest_follows():
    index = _index()
    a = make_split(index, SplitSpec(seed=0))
    b = make_split(index, SplitSpec(seed=0))
    c = make_split(index, SplitSpec(seed=5))
    assert a.equals(b) and split_digest(index, a) == split_digest(index, b)
    assert not a.equals(c) and split_digest(index, a) != split_digest(index, c)


def test_too_few_batches_or_unknown_condition_is_explained():
    index = _index(batches_per_group=2)
    with pytest.raises(NscfateError, match="needs at least 3 per class and day"):
        make_split(index, SplitSpec())
    by_cell = make_split(index, SplitSpec(group_by=None))  # the escape hatch named in the message
    assert set(by_cell[index.condition == "control"]) == {"train", "val", "test"}
    with pytest.raises(NscfateError, match="'CNTF'.*not in the dataset"):
        make_split(_index(), SplitSpec(holdout_conditions=("CNTF",)))
    with pytest.raises(NscfateError, match="fractions"):
        SplitSpec(val=0.6, test=0.5)


def test_mixed_batches_follow_their_majority_class():
    index = _index()
    index.loc[index.index[:2], "label"] = "neuron"  # two neurons in an astrocyte culture
    split = make_split(index, SplitSpec(seed=3))
    assert index.assign(split=split).groupby("batch")["split"].nunique().max() == 1
    assert np.isin(split.unique(), ["train", "val", "test", "indep:NT3", ""]).all()
