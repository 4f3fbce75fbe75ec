"""Evaluate a trained model on the test split and the independent conditions.

Everything is computed from per-cell predictions (one row per cell: its store row and one
probability per class), so training and ``nscfate-eval`` compute identical metrics from identical
predictions. Metric names are stable:

- ``test/acc``, ``test/f1_macro``, ``test/auroc``, ``test/ece``, ``test/acc_day{d}`` per day;
- ``indep/{condition}/pred_frac_{class}`` and ``indep/{condition}/true_frac_{class}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_calibration_error,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)

from nscfate.data.schema import CLASSES
from nscfate.data.splits import INDEP, TEST
from nscfate.errors import NscfateError

PROB_COLUMNS = [f"p_{c}" for c in CLASSES]
TEST_METRICS: tuple[str, ...] = ("test/acc", "test/f1_macro", "test/auroc", "test/ece")
_DYNAMIC = re.compile(
    r"^(test/acc_day[\d.]+|indep/[^/]+/(pred|true)_frac_(" + "|".join(CLASSES) + "))$"
)


def is_known_metric(name: str, fit_metrics: tuple[str, ...]) -> bool:
    """True if training logs ``name`` (fit metrics, test metrics, per-day or per-condition ones)."""
    return name in fit_metrics or name in TEST_METRICS or bool(_DYNAMIC.match(name))


def safe_name(condition: str) -> str:
    """A condition name as MLflow accepts it in a metric key (letters, digits, _ - . space)."""
    return re.sub(r"[^A-Za-z0-9_.\- ]", "_", condition)


@torch.inference_mode()
def predict_loader(model: torch.nn.Module, loader: DataLoader) -> pd.DataFrame:
    """Class probabilities for every crop a loader yields, as a table with the store row."""
    model.eval()
    device = next(model.parameters()).device
    rows, probs = [], []
    for batch in loader:
        logits = model(batch["image"].to(device, non_blocking=True))
        probs.append(logits.float().softmax(dim=1).cpu())
        rows.append(batch["row"])
    table = pd.DataFrame(torch.cat(probs).numpy().astype(np.float64), columns=PROB_COLUMNS)
    table.insert(0, "row", torch.cat(rows).numpy())
    return table


def attach_cells(predictions: pd.DataFrame, index: pd.DataFrame, split: pd.Series) -> pd.DataFrame:
    """Join per-cell metadata (label, day, condition, batch, source, split) and the predicted fate."""
    cells = index.loc[
        predictions["row"], ["label", "day", "condition", "batch", "source"]
    ].reset_index(drop=True)
    out = pd.concat([predictions.reset_index(drop=True), cells], axis=1)
    out["split"] = split.to_numpy()[predictions["row"].to_numpy()]
    out["predicted"] = np.asarray(CLASSES)[predictions[PROB_COLUMNS].to_numpy().argmax(axis=1)]
    return out


def classification_metrics(cells: pd.DataFrame, prefix: str = "test/") -> dict[str, float]:
    """Accuracy, macro-F1, macro-AUROC, calibration error and accuracy per day of labelled cells."""
    cells = cells[cells["label"] != ""]
    if cells.empty:
        raise NscfateError(f"no labelled cells to compute {prefix}* metrics on")
    probs = torch.tensor(cells[PROB_COLUMNS].to_numpy(), dtype=torch.float64)
    target = torch.tensor(cells["label"].map(CLASSES.index).to_numpy(), dtype=torch.long)
    k = len(CLASSES)
    metrics = {
        f"{prefix}acc": multiclass_accuracy(probs, target, k, average="micro"),
        f"{prefix}f1_macro": multiclass_f1_score(probs, target, k, average="macro"),
        f"{prefix}auroc": multiclass_auroc(probs, target, k, average="macro"),
        f"{prefix}ece": multiclass_calibration_error(probs, target, k, n_bins=15, norm="l1"),
    }
    for day, group in cells.groupby("day"):
        hit = (group["predicted"] == group["label"]).mean()
        metrics[f"{prefix}acc_day{day:g}"] = hit
    return {name: float(value) for name, value in metrics.items()}


def confusion(cells: pd.DataFrame) -> np.ndarray:
    """Confusion matrix (rows = true class, columns = predicted) of the labelled cells."""
    cells = cells[cells["label"] != ""]
    target = torch.tensor(cells["label"].map(CLASSES.index).to_numpy(), dtype=torch.long)
    preds = torch.tensor(cells["predicted"].map(CLASSES.index).to_numpy(), dtype=torch.long)
    return multiclass_confusion_matrix(preds, target, len(CLASSES)).numpy()


def fate_fractions(cells: pd.DataFrame, by: tuple[str, ...] = ("condition",)) -> pd.DataFrame:
    """Predicted (and, where labels are known, true) fraction of each fate per group of cells."""
    rows = []
    for key, group in cells.groupby(list(by)):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key, strict=True)) | {"n_cells": len(group)}
        labelled = group[group["label"] != ""]
        for c in CLASSES:
            row[f"pred_frac_{c}"] = float((group["predicted"] == c).mean())
            row[f"true_frac_{c}"] = (
                float((labelled["label"] == c).mean()) if len(labelled) else np.nan
            )
        rows.append(row)
    return pd.DataFrame(rows)


def fraction_metrics(fractions: pd.DataFrame) -> dict[str, float]:
    """``indep/{condition}/pred_frac_{class}`` and ``.../true_frac_{class}`` from a fractions table."""
    metrics = {}
    for row in fractions.to_dict("records"):
        name = safe_name(row["condition"])
        for c in CLASSES:
            metrics[f"indep/{name}/pred_frac_{c}"] = row[f"pred_frac_{c}"]
            if not np.isnan(row[f"true_frac_{c}"]):
                metrics[f"indep/{name}/true_frac_{c}"] = row[f"true_frac_{c}"]
    return metrics


@dataclass
class Evaluation:
    """What evaluating a model gives: metrics, per-cell predictions and the tables behind the plots."""

    metrics: dict[str, float]
    cells: pd.DataFrame
    confusion: np.ndarray
    accuracy_by_day: dict[float, float] = field(default_factory=dict)
    fractions: pd.DataFrame = field(default_factory=pd.DataFrame)
    fractions_by_day: pd.DataFrame = field(default_factory=pd.DataFrame)


def evaluate(model: torch.nn.Module, datamodule, parts: list[str] | None = None) -> Evaluation:
    """Predict the test split and every independent condition, then compute all test metrics."""
    parts = parts or [p for p in datamodule.parts if p == TEST or p.startswith(INDEP)]
    tables = [predict_loader(model, datamodule.loader(part)) for part in parts]
    cells = attach_cells(
        pd.concat(tables, ignore_index=True), datamodule.store.index, datamodule.split
    )
    test = cells[cells["split"] == TEST]
    indep = cells[cells["split"].str.startswith(INDEP)]
    metrics = classification_metrics(test)
    fractions = fate_fractions(indep) if len(indep) else pd.DataFrame()
    if len(fractions):
        metrics |= fraction_metrics(fractions)
    by_day = {
        float(k.removeprefix("test/acc_day")): v
        for k, v in metrics.items()
        if k.startswith("test/acc_day")
    }
    return Evaluation(
        metrics=metrics,
        cells=cells,
        confusion=confusion(test),
        accuracy_by_day=by_day,
        fractions=fractions,
        fractions_by_day=fate_fractions(indep, by=("condition", "day"))
        if len(indep)
        else pd.DataFrame(),
    )
