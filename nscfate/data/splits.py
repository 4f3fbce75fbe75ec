"""Train / val / test splits grouped by batch, stratified by class and day, plus held-out conditions.

Cells of one batch (a culture, plate or acquisition) share background, focus and culture history,
so they never sit on both sides of a split. Batches are assigned per stratum (the batch's majority
class and day) so every split sees every class and day. Chosen conditions (inducer treatments) are
held out whole as independent test sets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nscfate.errors import NscfateError

TRAIN, VAL, TEST = "train", "val", "test"
#: Prefix of the split name of a held-out condition: ``indep:<condition>``.
INDEP = "indep:"


@dataclass(frozen=True)
class SplitSpec:
    """How to split a store: fractions, seed, grouping column and held-out conditions."""

    val: float = 0.15
    test: float = 0.15
    seed: int = 0
    group_by: str | None = "batch"
    holdout_conditions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (0 < self.val < 1 and 0 < self.test < 1 and self.val + self.test < 1):
            raise NscfateError(
                f"split fractions val={self.val}, test={self.test}: each must be in (0, 1) and sum below 1"
            )


def make_split(index: pd.DataFrame, spec: SplitSpec) -> pd.Series:
    """Assign every cell to ``train``, ``val``, ``test`` or ``indep:<condition>``.

    Returns a string Series aligned with ``index``. Raises when a held-out condition is absent or a
    stratum has too few groups to appear in all three splits.
    """
    missing = [c for c in spec.holdout_conditions if c not in set(index["condition"])]
    if missing:
        present = ", ".join(sorted(set(index["condition"])))
        raise NscfateError(
            f"held-out condition(s) {missing} not in the dataset (conditions: {present})"
        )
    split = pd.Series("", index=index.index, dtype=object)
    held = index["condition"].isin(spec.holdout_conditions)
    split[held] = INDEP + index.loc[held, "condition"]
    labelled = ~held & (index["label"] != "")
    if not labelled.any():
        raise NscfateError("no labelled cells outside the held-out conditions to train on")
    split[labelled] = _assign_groups(index[labelled], spec)
    split[~held & ~labelled] = ""  # unlabelled cells outside held-out conditions are not used
    return split


def _assign_groups(cells: pd.DataFrame, spec: SplitSpec) -> pd.Series:
    if spec.group_by and spec.group_by not in cells.columns:
        raise NscfateError(f"data.split.group_by={spec.group_by!r} is not a column of the index")
    groups = (
        cells[spec.group_by].astype(str)
        if spec.group_by
        else pd.Series(cells.index.astype(str), index=cells.index)
    )
    strata = _group_strata(cells, groups)
    rng = np.random.default_rng(spec.seed)
    where: dict[str, str] = {}
    for stratum, members in sorted(strata.groupby(strata).groups.items()):
        names = sorted(members)
        if len(names) < 3:
            raise NscfateError(
                f"stratum {stratum} has {len(names)} {spec.group_by or 'cell'} group(s): a split grouped by "
                f"{spec.group_by} needs at least 3 per class and day (or set data.split.group_by=null to "
                "split cells individually)"
            )
        order = [names[i] for i in rng.permutation(len(names))]
        n_test = max(1, round(spec.test * len(names)))
        n_val = max(1, round(spec.val * len(names)))
        n_val = min(n_val, len(names) - n_test - 1)
        for k, name in enumerate(order):
            where[name] = TEST if k < n_test else VAL if k < n_test + n_val else TRAIN
    return groups.map(where)


def _group_strata(cells: pd.DataFrame, groups: pd.Series) -> pd.Series:
    """Each group's stratum: the majority ``label@day`` of its cells (Series indexed by group)."""
    day = cells["day"].map(lambda d: "?" if pd.isna(d) else f"{d:g}")
    key = cells["label"] + "@day" + day
    return key.groupby(groups).agg(lambda s: s.value_counts().index[0])


def split_digest(index: pd.DataFrame, split: pd.Series) -> str:
    """SHA-256 of which source (row) went to which split: equal digests mean equal test sets."""
    h = hashlib.sha256()
    for source, part in zip(index["source"], split, strict=True):
        h.update(f"{source}\t{part}\n".encode())
    return h.hexdigest()


def split_counts(index: pd.DataFrame, split: pd.Series) -> dict[str, dict[str, int]]:
    """Cells per split and class, for reports."""
    table = pd.crosstab(split[split != ""], index.loc[split != "", "label"])
    return {part: {k: int(v) for k, v in row.items() if v} for part, row in table.iterrows()}


def rows_of(split: pd.Series, parts: Sequence[str] | str) -> np.ndarray:
    """Row positions of the cells in one split (or several)."""
    parts = [parts] if isinstance(parts, str) else list(parts)
    return np.flatnonzero(split.isin(parts).to_numpy())
