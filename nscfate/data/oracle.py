"""Reference classifiers for the synthetic dataset: how separable it really is, and how confounded.

``oracle_accuracy_by_day`` reads only the generator's latent morphology (``lat_*``), so it measures
the biology's difficulty per day; a CNN's accuracy is reported relative to it.
``mean_intensity_accuracy`` reads only each crop's mean intensity: well above chance on raw crops
means batch brightness is confounded with class; near chance after normalisation means the
normalisation cures it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from nscfate.data.normalize import per_image, to_unit_float
from nscfate.data.schema import CLASSES, CONTROL, LATENT_PREFIX
from nscfate.errors import NscfateError

#: Folds of the batch-grouped cross-validation.
N_SPLITS = 5


def grouped_cv_accuracy(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0) -> float:
    """Out-of-fold accuracy of a standardised logistic regression, folds grouped by batch."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_groups = len(np.unique(groups))
    if n_groups < 2 or len(np.unique(y)) < 2:
        raise NscfateError(
            f"grouped cross-validation needs >= 2 batches and >= 2 classes, got {n_groups} batches"
            f" and classes {sorted(set(y))}"
        )
    cv = StratifiedGroupKFold(n_splits=min(N_SPLITS, n_groups), shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    pred = cross_val_predict(model, x, y, groups=groups, cv=cv)
    return float(np.mean(pred == y))


def _rows(index: pd.DataFrame, condition: str) -> np.ndarray:
    rows = np.flatnonzero(index["condition"].to_numpy() == condition)
    if len(rows) == 0:
        known = sorted(index["condition"].unique())
        raise NscfateError(f"no cells of condition {condition!r}; the index has {known}")
    return rows


def oracle_accuracy_by_day(
    index: pd.DataFrame, condition: str = CONTROL, seed: int = 0
) -> dict[float, float]:
    """Per day, the batch-grouped 5-fold CV accuracy of a logistic regression on the lat_* columns.

    This is how separable each day's biology really is (an upper reference for image models).
    """
    latent = [c for c in index.columns if c.startswith(LATENT_PREFIX)]
    if not latent:
        raise NscfateError(f"the index has no {LATENT_PREFIX}* columns: not a synthetic dataset?")
    sub = index.iloc[_rows(index, condition)]
    result: dict[float, float] = {}
    for day, part in sub.groupby("day", sort=True):
        x = part[latent].to_numpy(dtype=np.float64)
        y = part["label"].to_numpy()
        result[float(day)] = grouped_cv_accuracy(x, y, part["batch"].to_numpy(), seed)
    return result


def crop_means(images: np.ndarray, white_level: float, normalize: bool) -> np.ndarray:
    """Mean intensity of each crop, raw (/white_level) or after per-image normalisation."""
    out = np.empty(len(images), dtype=np.float64)
    for start in range(0, len(images), 4096):  # bounded memory on large stores
        x = to_unit_float(images[start : start + 4096], white_level)
        if normalize:
            x = per_image(x)
        out[start : start + 4096] = x.mean(axis=(1, 2))
    return out


def mean_intensity_accuracy(
    images: np.ndarray,
    index: pd.DataFrame,
    white_level: float,
    normalize: bool,
    condition: str = CONTROL,
    seed: int = 0,
) -> float:
    """Batch-grouped CV accuracy of a classifier whose only feature is the crop's mean intensity.

    The confound probe: chance is 1/len(classes present). ``normalize=True`` applies
    :func:`nscfate.data.normalize.per_image` first.
    """
    if len(images) != len(index):
        raise NscfateError(f"{len(images)} images but {len(index)} index rows")
    rows = _rows(index, condition)
    feature = crop_means(np.asarray(images)[rows], white_level, normalize)[:, None]
    y = index["label"].to_numpy()[rows]
    unknown = set(y) - set(CLASSES)
    if unknown:
        raise NscfateError(f"labels {sorted(unknown)} are not fate classes {CLASSES}")
    return grouped_cv_accuracy(feature, y, index["batch"].to_numpy()[rows], seed)


def fit_oracle(index: pd.DataFrame, split: pd.Series) -> Any:
    """A standardised logistic regression on the latent traits, fit on the ``train`` cells."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = (split == "train").to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(index.loc[train, latent_columns(index)].to_numpy(), index.loc[train, "label"])
    return model


def latent_columns(index: pd.DataFrame) -> list[str]:
    """The generator's latent-trait columns (``lat_*``); an error on a store without them."""
    cols = [c for c in index.columns if c.startswith(LATENT_PREFIX)]
    if not cols:
        raise NscfateError("the oracle needs the synthetic generator's latent columns (lat_*)")
    return cols


def oracle_log_probs(model: Any, index: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """The fitted oracle's log-probabilities (columns in ``CLASSES`` order) for some rows."""
    probs = model.predict_proba(index.iloc[rows][latent_columns(index)].to_numpy())
    order = [list(model.classes_).index(c) for c in CLASSES]
    return np.log(np.clip(probs[:, order], 1e-12, 1.0))


def oracle_test_scores(index: pd.DataFrame, split: pd.Series) -> dict[str, Any]:
    """The latent oracle on a run's own split: fit on ``train`` cells, score the ``test`` cells.

    Returns ``acc``, ``f1_macro``, ``by_day`` (day -> accuracy), the ceiling a CNN on the same
    test set is compared with, and ``model`` (the fitted oracle).
    """
    from sklearn.metrics import f1_score

    model = fit_oracle(index, split)
    test = (split == "test").to_numpy()
    truth = index.loc[test, "label"].to_numpy()
    pred = model.predict(index.loc[test, latent_columns(index)].to_numpy())
    scores: dict[str, Any] = {
        "acc": float(np.mean(pred == truth)),
        "f1_macro": float(f1_score(truth, pred, labels=list(CLASSES), average="macro")),
        "model": model,
    }
    days = index.loc[test, "day"].to_numpy()
    scores["by_day"] = {
        float(day): float(np.mean(pred[days == day] == truth[days == day]))
        for day in np.unique(days)
    }
    return scores
