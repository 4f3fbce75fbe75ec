"""Evaluate a trained model: the one module that owns metric names and the evaluation tables.

Everything is computed from per-cell predictions (one row per cell: its store row, raw logits,
calibrated probabilities, OOD score), so training, ``nscfate-eval`` and ``nscfate-predict`` compute
identical numbers from identical predictions. Metric names are stable:

- ``test/acc``, ``test/f1_macro``, ``test/auroc``, ``test/ece`` (calibrated),
  ``test/ece_uncalibrated``, ``test/ece_floor`` (what a perfectly calibrated model would measure on
  these cells), ``test/ood_frac``, ``test/acc_day{d}`` per day;
- per independent condition ``indep/{c}/pred_frac_{k}`` (classify and count),
  ``indep/{c}/est_frac_{k}`` with ``_lo``/``_hi`` (corrected, 95 % interval), ``indep/{c}/true_frac_{k}``,
  ``indep/{c}/ood_frac``; over conditions ``indep/frac_mae_raw``, ``indep/frac_mae``,
  ``indep/frac_max_err`` (where the truth is known);
- on synthetic data, the latent oracle's ``oracle/acc``, ``oracle/f1_macro``, ``oracle/acc_day{d}``
  and ``oracle/frac_mae`` / ``oracle/frac_max_err`` (its posteriors through the same correction).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_calibration_error,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)

from nscfate.data.schema import CLASSES, LATENT_PREFIX, canonical_label
from nscfate.data.splits import INDEP, TEST, TRAIN, VAL, rows_of
from nscfate.errors import NscfateError
from nscfate.estimation import EstimationSettings, FateEstimator, fit_estimator
from nscfate.estimation.quantify import Interval
from nscfate.models import classifier_of

PROB_COLUMNS = [f"p_{c}" for c in CLASSES]
LOGIT_COLUMNS = [f"logit_{c}" for c in CLASSES]
# Every metric name a run logs is made here.
#: What the LightningModule logs while fitting, per epoch (val/f1_macro_best: the best epoch so far).
TRAIN_PREFIX, VAL_PREFIX = "train/", "val/"
TRAIN_LOSS, TRAIN_ACC = f"{TRAIN_PREFIX}loss", f"{TRAIN_PREFIX}acc"
VAL_LOSS, VAL_ACC, VAL_F1 = f"{VAL_PREFIX}loss", f"{VAL_PREFIX}acc", f"{VAL_PREFIX}f1_macro"
VAL_F1_BEST = f"{VAL_F1}_best"
FIT_METRICS: tuple[str, ...] = (TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC, VAL_F1, VAL_F1_BEST)
#: Prefixes after fitting: the test split, the held-out (independent) conditions, the latent oracle.
TEST_PREFIX, INDEP_PREFIX, ORACLE_PREFIX = "test/", "indep/", "oracle/"
TEST_ACC, TEST_F1, TEST_AUROC = f"{TEST_PREFIX}acc", f"{TEST_PREFIX}f1_macro", f"{TEST_PREFIX}auroc"
TEST_ECE, TEST_ECE_RAW, TEST_ECE_FLOOR, TEST_OOD = (
    f"{TEST_PREFIX}ece",
    f"{TEST_PREFIX}ece_uncalibrated",
    f"{TEST_PREFIX}ece_floor",
    f"{TEST_PREFIX}ood_frac",
)
TEST_METRICS: tuple[str, ...] = (
    TEST_ACC,
    TEST_F1,
    TEST_AUROC,
    TEST_ECE,
    TEST_ECE_RAW,
    TEST_ECE_FLOOR,
    TEST_OOD,
)
#: ECE binning, and label draws behind ``test/ece_floor``.
ECE_BINS, ECE_FLOOR_DRAWS = 15, 100
#: Fate-fraction error over held-out conditions x fates: counted, corrected, worst corrected.
FRAC_MAE_RAW, FRAC_MAE, FRAC_MAX_ERR = (
    f"{INDEP_PREFIX}frac_{k}" for k in ("mae_raw", "mae", "max_err")
)
FRACTION_SUMMARY: tuple[str, ...] = (FRAC_MAE_RAW, FRAC_MAE, FRAC_MAX_ERR)
ORACLE_ACC, ORACLE_F1 = f"{ORACLE_PREFIX}acc", f"{ORACLE_PREFIX}f1_macro"
#: The latent oracle's fate-fraction error with the run's own correction (synthetic data only).
ORACLE_FRACTIONS: tuple[str, ...] = ("frac_mae", "frac_max_err")
ORACLE_FRAC_MAE, ORACLE_FRAC_MAX_ERR = (f"{ORACLE_PREFIX}{k}" for k in ORACLE_FRACTIONS)
#: The per-day and per-condition names, as an error message lists them.
DYNAMIC_METRICS = (
    f"{TEST_PREFIX}acc_day<d>",
    f"{INDEP_PREFIX}<condition>/pred_frac_<class>",
    f"{INDEP_PREFIX}<condition>/est_frac_<class>",
)
_CLASS = "(" + "|".join(CLASSES) + ")"
_DYNAMIC = re.compile(
    rf"^({TEST_PREFIX}acc_day[\d.]+|{INDEP_PREFIX}[^/]+/((pred|true)_frac_{_CLASS}|est_frac_{_CLASS}(_lo|_hi)?|ood_frac))$"
)
#: Columns of a fate-fraction table (one row per group x fate), after the grouping columns.
FRACTION_COLUMNS = ("fate", "n_cells", "raw_frac", "est_frac", "ci_low", "ci_high", "ood_frac")


def is_known_metric(name: str) -> bool:
    """True if training logs ``name`` (fit metrics, test metrics, per-day or per-condition ones)."""
    return (
        name in FIT_METRICS
        or name in TEST_METRICS
        or name in FRACTION_SUMMARY
        or bool(_DYNAMIC.match(name))
    )


def day_metric(prefix: str, day: float) -> str:
    """The name of a per-day accuracy metric: ``test/acc_day3``, ``oracle/acc_day3``."""
    return f"{prefix}acc_day{day:g}"


def safe_name(condition: str) -> str:
    """A condition name as MLflow accepts it in a metric key (letters, digits, _ - . space)."""
    return re.sub(r"[^A-Za-z0-9_.\- ]", "_", condition)


@dataclass
class Outputs:
    """What the network says about a set of crops: store rows, labels, logits, penultimate features."""

    rows: np.ndarray
    labels: np.ndarray
    logits: np.ndarray
    features: np.ndarray


@torch.inference_mode()
def logits_and_features(net: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Logits and penultimate features (the classifier layer's input) of one batch, float64."""
    net = getattr(net, "_orig_mod", net)  # torch.compile: hooks only fire on the eager module
    seen: list[torch.Tensor] = []
    hook = classifier_of(net).register_forward_hook(
        lambda _m, args, _out: seen.append(torch.flatten(args[0], 1))
    )
    try:
        logits = net(x)
    finally:
        hook.remove()
    as_array = lambda t: t.float().cpu().numpy().astype(np.float64)  # noqa: E731
    return as_array(logits), as_array(seen[0])


def inference_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The network of ``model`` as evaluation runs it: a copy in eval mode whose batch norms are
    folded into the convolutions before them and whose activations are channels-last.

    The same function of the input (logits within float32 rounding, ~1e-7), about 2.5x faster on
    a CPU (small_cnn, 64x64, batch 256: 4.6 -> 1.7 ms per crop on this project's machine). The
    trained module is left as it was.
    """
    net = getattr(model, "net", model)
    net = copy.deepcopy(getattr(net, "_orig_mod", net)).eval()  # torch.compile: its eager module
    with torch.no_grad():
        _fold_batch_norms(net)
    return net.to(memory_format=torch.channels_last)


def _fold_batch_norms(module: nn.Module) -> None:
    """Fold every ``BatchNorm2d`` that directly follows a convolution in an ``nn.Sequential``
    (or ends a nested one, like a separable convolution) into that convolution."""
    for child in module.children():
        _fold_batch_norms(child)
    if not isinstance(module, nn.Sequential):
        return
    names = list(module._modules)
    for i in range(1, len(names)):
        bn, conv, holder, name = module[i], module[i - 1], module, names[i - 1]
        while isinstance(conv, nn.Sequential) and len(conv):  # its last layer
            holder, name = conv, list(conv._modules)[-1]
            conv = conv[-1]
        foldable = (
            type(bn) is nn.BatchNorm2d  # not timm's BatchNormAct2d, which adds an activation
            and bn.track_running_stats
            and bn.running_mean is not None
            and type(conv) is nn.Conv2d
            and conv.out_channels == bn.num_features
        )
        if foldable:
            setattr(holder, name, fuse_conv_bn_eval(conv, bn))
            module[i] = nn.Identity()


def infer(net: torch.nn.Module, loader: DataLoader) -> Outputs:
    """Logits and penultimate features of every crop a loader yields, by ``net`` as
    :func:`inference_copy` made it."""
    device = next(net.parameters()).device
    rows, labels, logits, features = [], [], [], []
    for batch in loader:
        x = batch["image"].to(device, non_blocking=True)
        z, f = logits_and_features(net, x.contiguous(memory_format=torch.channels_last))
        logits.append(z)
        features.append(f)
        rows.append(batch["row"].numpy())
        labels.append(batch["label"].numpy())
    return Outputs(
        np.concatenate(rows),
        np.concatenate(labels),
        np.concatenate(logits),
        np.concatenate(features),
    )


def fit_estimator_on(
    model: torch.nn.Module,
    datamodule,
    settings: EstimationSettings,
    limit_batches: int | float = 1.0,
) -> FateEstimator:
    """Fit calibration (validation cells) and the OOD detector (training cells, unaugmented).

    ``limit_batches``: read only that many batches (or that share) of each split, spread over it
    (a trainer's ``limit_test_batches``: one batch under ``fast_dev_run``).
    """
    net = inference_copy(model)
    val = infer(net, datamodule.loader(VAL, workers=0, limit_batches=limit_batches))
    train = infer(
        net,
        datamodule.loader(TRAIN, augmented=False, workers=0, limit_batches=limit_batches),
    )
    known = val.labels >= 0  # unlabelled cells (label -1) cannot teach the calibration
    index = datamodule.store.index
    cultures = index["batch"].to_numpy()[val.rows[known]]
    days = index["day"].to_numpy(dtype=np.float64)[val.rows[known]]
    return fit_estimator(
        settings,
        val.logits[known],
        val.labels[known],
        train.features,
        train.labels,
        val.features,
        cultures,
        days,
    )


def cell_table(
    outputs: Outputs, estimator: FateEstimator, days: np.ndarray | None = None
) -> pd.DataFrame:
    """One row per crop: store row, raw logits, calibrated probabilities (through each crop's day
    calibration, ``days`` per crop), OOD score and flag."""
    table = pd.DataFrame({"row": outputs.rows})
    table[LOGIT_COLUMNS] = outputs.logits
    table[PROB_COLUMNS] = estimator.probabilities(outputs.logits, days)
    scores = estimator.ood_scores(outputs.features)
    table["ood_score"] = scores
    table["ood"] = estimator.ood_flags(scores)
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


def classification_metrics(cells: pd.DataFrame, prefix: str = TEST_PREFIX) -> dict[str, float]:
    """Accuracy, macro-F1, macro-AUROC, calibration error (and, given logits, before calibration),
    OOD share (given OOD flags) and accuracy per day of labelled cells."""
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
        f"{prefix}ece": multiclass_calibration_error(probs, target, k, n_bins=ECE_BINS, norm="l1"),
        f"{prefix}ece_floor": ece_floor(probs),
    }
    if set(LOGIT_COLUMNS) <= set(cells.columns):
        raw = torch.tensor(cells[LOGIT_COLUMNS].to_numpy(), dtype=torch.float64).softmax(1)
        metrics[f"{prefix}ece_uncalibrated"] = multiclass_calibration_error(
            raw, target, k, n_bins=ECE_BINS, norm="l1"
        )
    if "ood" in cells and cells["ood_score"].notna().any():
        metrics[f"{prefix}ood_frac"] = cells["ood"].mean()
    for day, acc in accuracy_by_day(cells).items():
        metrics[day_metric(prefix, day)] = acc
    return {name: float(value) for name, value in metrics.items()}


def ece_floor(probs: torch.Tensor, draws: int = ECE_FLOOR_DRAWS, seed: int = 0) -> float:
    """The ECE a perfectly calibrated model with these probabilities would measure on this many
    cells: the mean ECE over label sets drawn from the probabilities themselves.

    Binned ECE is biased upward on a finite set (each bin's accuracy is a sample mean): on the demo's
    720 test cells this floor is about 0.03, so a measured ECE near it cannot tell calibration
    errors from sampling noise; it shrinks as 1/sqrt(cells).
    """
    if not torch.isfinite(probs).all():  # a diverged model: no distribution to draw labels from
        return float("nan")
    gen = torch.Generator().manual_seed(seed)
    labels = torch.multinomial(probs.float(), draws, replacement=True, generator=gen).T
    # torchmetrics' binning (float32 top-1 confidences, right-closed bins), every draw at once
    conf, predicted = probs.float().max(1)
    edges = torch.linspace(0, 1, ECE_BINS + 1, dtype=conf.dtype)
    index = torch.bucketize(conf, edges, right=True) - 1
    bins = torch.nn.functional.one_hot(index, ECE_BINS + 1).to(conf.dtype)  # cells x bins
    count = bins.sum(0)
    per_bin = count.clamp_min(1)  # an empty bin weighs 0 below
    mean_conf = conf @ bins / per_bin
    accuracy = labels.eq(predicted).to(conf.dtype) @ bins / per_bin  # draws x bins
    return float(((accuracy - mean_conf).abs() @ (count / len(conf))).mean())


def accuracy_by_day(cells: pd.DataFrame) -> dict[float, float]:
    """Accuracy of the labelled cells of each day of culture."""
    cells = cells[cells["label"] != ""]
    hits = (cells["predicted"] == cells["label"]).groupby(cells["day"]).mean()
    return {float(day): float(acc) for day, acc in hits.items()}


def confusion(cells: pd.DataFrame) -> np.ndarray:
    """Confusion matrix (rows = true class, columns = predicted) of the labelled cells."""
    cells = cells[cells["label"] != ""]
    target = torch.tensor(cells["label"].map(CLASSES.index).to_numpy(), dtype=torch.long)
    preds = torch.tensor(cells["predicted"].map(CLASSES.index).to_numpy(), dtype=torch.long)
    return multiclass_confusion_matrix(preds, target, len(CLASSES)).numpy()


def fate_fractions(
    cells: pd.DataFrame,
    estimator: FateEstimator | None,
    by: tuple[str, ...] = ("condition",),
) -> pd.DataFrame:
    """One row per group x fate: cells, classify-and-count fraction, corrected estimate with its
    interval, share of OOD cells and (where labels are known) the true fraction.

    Without an estimator (a model from before calibration) the estimate is the count itself and
    the interval bootstraps the group's cells only.
    """
    rows = []
    for i, (key, group) in enumerate(cells.groupby(list(by), sort=True, dropna=False)):
        key = key if isinstance(key, tuple) else (key,)
        interval = _group_estimate(group, estimator, seed=i)
        labelled = group[group["label"] != ""] if "label" in group else group.iloc[:0]
        ood = float(group["ood"].mean()) if "ood" in group else np.nan
        for j, fate in enumerate(CLASSES):
            rows.append(
                dict(zip(by, key, strict=True))
                | {
                    "fate": fate,
                    "n_cells": len(group),
                    "raw_frac": float((group["predicted"] == fate).mean()),
                    "est_frac": float(interval.estimate[j]),
                    "ci_low": float(interval.low[j]),
                    "ci_high": float(interval.high[j]),
                    "ood_frac": ood,
                    "true_frac": float((labelled["label"] == fate).mean())
                    if len(labelled)
                    else np.nan,
                }
            )
    return pd.DataFrame(rows, columns=[*by, *FRACTION_COLUMNS, "true_frac"])


def _group_estimate(group: pd.DataFrame, estimator: FateEstimator | None, seed: int) -> Interval:
    if estimator is not None:
        logits = group[LOGIT_COLUMNS].to_numpy()
        days = group["day"].to_numpy(dtype=np.float64) if "day" in group else None
        return estimator.fractions(logits, seed=seed, cultures=sampled_cultures(group), days=days)
    hard = np.eye(len(CLASSES))[group["predicted"].map(CLASSES.index).to_numpy()]
    rng = np.random.default_rng(seed)
    draws = [hard[rng.integers(0, len(hard), len(hard))].mean(0) for _ in range(200)]
    low, high = np.quantile(np.stack(draws), [0.025, 0.975], axis=0)
    point = hard.mean(0)
    return Interval(point, np.minimum(low, point), np.maximum(high, point))


def sampled_cultures(group: pd.DataFrame) -> np.ndarray | None:
    """The culture (``batch``) of each cell of a group whose cultures are samples of it, for the
    interval's two-stage bootstrap; None (resample cells) when cultures sort cells by fate, since
    resampling those would resample the fate mix itself, or without a batch column.

    Known labels decide: cultures sort cells by fate when the group holds several fates and every
    culture only one (an IDEAS export's ``a_1d1``, ``n_1d1``). Without them, the names do: a batch
    path with a fate's name in it is a ``<class>/...`` folder of the folder ingest.
    """
    if "batch" not in group:
        return None
    cultures = group["batch"].astype(str).to_numpy()
    labels = group["label"].astype(str) if "label" in group else pd.Series([], dtype=str)
    known = labels != ""
    if labels[known].nunique() > 1:
        fates_per_culture = labels[known].groupby(cultures[known.to_numpy()]).nunique()
        return None if (fates_per_culture == 1).all() else cultures
    if any(_names_a_fate(name) for name in np.unique(cultures)):
        return None
    return cultures


def _names_a_fate(batch: str) -> bool:
    """True when a part of a batch path is a fate's name or alias."""
    for part in batch.split("/"):
        try:
            canonical_label(part)
        except NscfateError:
            continue
        return True
    return False


def fraction_metrics(fractions: pd.DataFrame) -> dict[str, float]:
    """Per-condition metrics of a fractions table (grouped by condition) and the error summary."""
    metrics: dict[str, float] = {}
    for row in fractions.to_dict("records"):
        base, fate = f"{INDEP_PREFIX}{safe_name(row['condition'])}", row["fate"]
        metrics |= {
            f"{base}/pred_frac_{fate}": row["raw_frac"],
            f"{base}/est_frac_{fate}": row["est_frac"],
            f"{base}/est_frac_{fate}_lo": row["ci_low"],
            f"{base}/est_frac_{fate}_hi": row["ci_high"],
        }
        if np.isfinite(row["ood_frac"]):
            metrics[f"{base}/ood_frac"] = row["ood_frac"]
        if np.isfinite(row["true_frac"]):
            metrics[f"{base}/true_frac_{fate}"] = row["true_frac"]
    known = fractions[np.isfinite(fractions["true_frac"])]
    if len(known):
        raw_err = (known["raw_frac"] - known["true_frac"]).abs()
        err = (known["est_frac"] - known["true_frac"]).abs()
        metrics |= {
            FRAC_MAE_RAW: float(raw_err.mean()),
            FRAC_MAE: float(err.mean()),
            FRAC_MAX_ERR: float(err.max()),
        }
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
    estimator: FateEstimator | None = None


def evaluate(
    model: torch.nn.Module,
    datamodule,
    estimator: FateEstimator,
    parts: list[str] | None = None,
    limit_batches: int | float = 1.0,
) -> Evaluation:
    """Predict the test split and every independent condition with calibrated probabilities and
    OOD flags, then compute the test metrics and the corrected fate fractions.

    ``limit_batches``: as in :func:`fit_estimator_on`, per part.
    """
    parts = parts or [p for p in datamodule.parts if p == TEST or p.startswith(INDEP)]
    net = inference_copy(model)
    days = datamodule.store.index["day"].to_numpy(dtype=np.float64)
    outputs = [
        infer(net, datamodule.loader(part, workers=0, limit_batches=limit_batches))
        for part in parts
    ]
    tables = [cell_table(out, estimator, days[out.rows]) for out in outputs]
    cells = attach_cells(
        pd.concat(tables, ignore_index=True), datamodule.store.index, datamodule.split
    )
    test = cells[cells["split"] == TEST]
    indep = cells[cells["split"].str.startswith(INDEP)]
    metrics = classification_metrics(test)
    fractions = by_day = pd.DataFrame()
    if len(indep):
        fractions = fate_fractions(indep, estimator)
        metrics |= fraction_metrics(fractions)
        by_day = fate_fractions(indep, estimator, by=("condition", "day"))
    return Evaluation(
        metrics=metrics,
        cells=cells,
        confusion=confusion(test),
        accuracy_by_day=accuracy_by_day(test),
        fractions=fractions,
        fractions_by_day=by_day,
        estimator=estimator,
    )


def oracle_scores(datamodule: Any, settings: EstimationSettings | None = None) -> dict[str, Any]:
    """The latent oracle (a classifier on the generator's latent traits) on the run's own split
    (synthetic data only; empty otherwise): test accuracy, by day, and the fate-fraction error the
    run's own correction reaches on the oracle's posteriors."""
    index = datamodule.store.index
    if not any(c.startswith(LATENT_PREFIX) for c in index.columns):
        return {}
    settings = settings or EstimationSettings()
    # The same data, split and settings give the same oracle: the trials of a sweep share it.
    key = (str(datamodule.store.path), datamodule.store.digest, datamodule.split_digest, settings)
    if key not in _ORACLES:
        from nscfate.data.oracle import oracle_test_scores

        scores = oracle_test_scores(index, datamodule.split)
        model = scores.pop("model")
        _ORACLES.clear()  # one at a time
        _ORACLES[key] = scores | oracle_fraction_errors(model, index, datamodule.split, settings)
    return copy.deepcopy(_ORACLES[key])


#: The last oracle computed in this process (see :func:`oracle_scores`).
_ORACLES: dict[tuple, dict[str, Any]] = {}


def oracle_fraction_errors(
    model: Any, index: pd.DataFrame, split: pd.Series, settings: EstimationSettings
) -> dict[str, float]:
    """Calibrate the oracle on the validation cells and estimate every independent condition's
    fate fractions with ``settings`` (point estimates): the error a model that saw the cells'
    true morphology, unblurred by the microscope, would leave. Empty without such conditions."""
    from nscfate.data.oracle import oracle_log_probs

    parts = sorted(p for p in split.unique() if p.startswith(INDEP))
    if not parts:
        return {}
    labels = index["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    val = rows_of(split, VAL)
    days = index["day"].to_numpy(dtype=np.float64)
    estimator = fit_estimator(
        replace(settings, n_boot=0),
        oracle_log_probs(model, index, val),
        labels[val],
        val_days=days[val],
    )
    rows = rows_of(split, parts)
    logits = oracle_log_probs(model, index, rows)
    cells = pd.DataFrame(logits, columns=LOGIT_COLUMNS).assign(
        condition=index["condition"].to_numpy()[rows],
        day=days[rows],
        label=index["label"].to_numpy()[rows],
        predicted=np.asarray(CLASSES)[logits.argmax(axis=1)],
    )
    summary = fraction_metrics(fate_fractions(cells, estimator))
    return {k: summary[f"{INDEP_PREFIX}{k}"] for k in ORACLE_FRACTIONS}


def oracle_metrics(oracle: dict[str, Any]) -> dict[str, float]:
    """``oracle/acc``, ``oracle/f1_macro``, ``oracle/acc_day{d}`` and, with independent
    conditions, ``oracle/frac_mae`` and ``oracle/frac_max_err`` from the oracle's scores."""
    if not oracle:
        return {}
    by_day = {day_metric(ORACLE_PREFIX, d): v for d, v in oracle["by_day"].items()}
    fractions = {f"{ORACLE_PREFIX}{k}": oracle[k] for k in ORACLE_FRACTIONS if k in oracle}
    return {ORACLE_ACC: oracle["acc"], ORACLE_F1: oracle["f1_macro"]} | by_day | fractions
