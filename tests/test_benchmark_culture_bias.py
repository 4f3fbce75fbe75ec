"""The culture-bias benchmark's robust aggregates over a condition's cultures."""

import numpy as np
import pandas as pd

from benchmarks.culture_bias import culture_aggregates
from nscfate.data.schema import CLASSES
from nscfate.estimation import EstimationSettings, fit_estimator
from nscfate.evaluation.evaluate import LOGIT_COLUMNS


def confident_logits(labels: np.ndarray) -> np.ndarray:
    return np.eye(len(CLASSES))[labels] * 8.0


def test_median_over_cultures_ignores_one_culture_the_model_misreads():
    rng = np.random.default_rng(0)
    val_labels = np.repeat(np.arange(3), 200)
    estimator = fit_estimator(
        EstimationSettings(n_boot=0), confident_logits(val_labels), val_labels
    )
    labels = rng.choice(3, size=5 * 120, p=[0.5, 0.3, 0.2])
    logits = confident_logits(labels)
    logits[:120] = confident_logits(np.zeros(120, dtype=int))  # culture 0: every cell "astrocyte"
    cells = pd.DataFrame(logits, columns=LOGIT_COLUMNS).assign(
        split="indep:T3",
        condition="T3",
        batch=np.repeat([f"c{i}" for i in range(5)], 120),
        label=np.array(CLASSES)[labels],
    )
    errors = culture_aggregates(cells, estimator)
    # The misread culture pulls the estimate from all cells; the median and trimmed mean drop it.
    assert errors["all_cells"]["frac_max_err"] > 0.05
    assert errors["culture_median"]["frac_max_err"] < 0.03
    assert errors["culture_trimmed"]["frac_max_err"] < 0.03
