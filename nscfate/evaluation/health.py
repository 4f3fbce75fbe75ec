"""Did the run learn anything? Warnings for a model that predicts one class or stays at chance.

A run can end without error and still be useless: with too few optimizer steps a network predicts
the same fate for every cell (macro-F1 1/6 for three balanced fates) or its validation macro-F1
never leaves chance (1/K for K fates, whatever the class mix, for a guess that follows the mix).
Such runs must say so, with what to try, instead of "succeeding".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nscfate.data.schema import CLASSES
from nscfate.data.splits import TEST
from nscfate.evaluation.evaluate import LOGIT_COLUMNS, VAL_F1_BEST

#: A model that gives one fate to at least this share of the test cells predicts a single class.
SINGLE_CLASS_SHARE = 0.98
#: Best validation macro-F1 within this margin of chance (1/K) counts as "at chance".
CHANCE_MARGIN = 0.05
ADVICE = (
    "give it more optimizer steps (a larger recipe.min_steps or trainer.max_epochs, a smaller "
    "data.batch_size), try optimizer.lr between 1e-3 and 3e-3, and check that labels match the "
    "crops (nscfate-data preview)"
)


@dataclass(frozen=True)
class RunWarning:
    """Something wrong with a finished run: a short code, what happened and what to try."""

    code: str
    message: str
    advice: str = ADVICE

    def __str__(self) -> str:
        return f"{self.message}; {self.advice}"


def check_run(metrics: Mapping[str, float], cells: pd.DataFrame) -> list[RunWarning]:
    """Warnings for a run from its metrics and its per-cell test predictions (``split``,
    ``label``, ``predicted`` and ``logit_*`` columns, as ``nscfate.evaluation.evaluate`` makes them).

    The single-class check reads the network's own argmax (the logits): calibration's class biases
    can spread a degenerate model's answers and hide that it learned one class."""
    test = cells[(cells["split"] == TEST) & (cells["label"] != "")]
    n_fates = test["label"].nunique()
    warnings = []
    if len(test) and n_fates >= 2:
        raw = set(LOGIT_COLUMNS) <= set(test.columns)
        own = (
            pd.Series(np.asarray(CLASSES)[test[LOGIT_COLUMNS].to_numpy().argmax(axis=1)])
            if raw
            else test["predicted"]
        )
        shares = own.value_counts(normalize=True)
        if shares.iloc[0] >= SINGLE_CLASS_SHARE:
            warnings.append(
                RunWarning(
                    "single_class",
                    f"the model predicts {shares.index[0]!r} for {shares.iloc[0]:.0%} of the "
                    f"{len(test)} test cells, which hold {n_fates} fates",
                )
            )
    best = metrics.get(VAL_F1_BEST)
    if best is not None and n_fates >= 2 and best <= 1 / n_fates + CHANCE_MARGIN:
        warnings.append(
            RunWarning(
                "chance",
                f"the best validation macro-F1 {best:.3f} is at chance (1/{n_fates} = "
                f"{1 / n_fates:.3f} for {n_fates} fates)",
            )
        )
    return warnings
