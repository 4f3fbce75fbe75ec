"""The sections of a run's report, from what the run logged (``nscfate.tracking.record``)."""

from __future__ import annotations

from nscfate.evaluation.evaluate import (
    FRACTION_SUMMARY,
    ORACLE_ACC,
    ORACLE_F1,
    ORACLE_FRAC_MAE,
    TEST_ECE,
    TEST_ECE_FLOOR,
    TEST_ECE_RAW,
    TEST_METRICS,
)
from nscfate.report import html as h
from nscfate.report.figures import accuracy_figure, accuracy_intervals, oracle_by_day, png_bytes
from nscfate.report.sources import RunData

#: Params shown under "what was trained" (prefixes of the flattened config's keys).
SHOWN_PARAMS = (
    "task_name",
    "seed",
    "model.",
    "augmentation.policy",
    "augmentation.magnitude",
    "optimizer.lr",
    "trainer.max_epochs",
    "data.batch_size",
    "data.path",
    "data.synthetic.",
    "data.split.",
    "calibration.method",
    "quantify.",
)
#: Headline test metrics (and the oracle's), when logged: the names evaluation owns.
HEADLINE = (*TEST_METRICS, ORACLE_ACC, ORACLE_F1)


def provenance(run: RunData) -> h.Section:
    """What was trained on what data: the run, its commit, dataset and split digests, settings."""
    tags = run.tags
    facts = [
        ("MLflow run", f"{run.name} ({run.run_id}), experiment {run.experiment}, {run.status}"),
        (
            "git commit",
            tags.get("mlflow.source.git.commit", "not recorded")
            + (" (uncommitted changes)" if tags.get("nscfate.git_dirty") == "True" else ""),
        ),
        ("dataset", tags.get("nscfate.dataset_path", "not recorded")),
        ("dataset digest", tags.get("nscfate.dataset_digest", "not recorded")),
        ("split digest", tags.get("nscfate.split_digest", "not recorded")),
    ]
    params = sorted(
        (k, v)
        for k, v in run.params.items()
        if k.startswith(SHOWN_PARAMS) and not k.endswith("_target_") and len(v) <= 160
    )
    body = h.table(facts, ["", ""])
    body += f"<details><summary>settings ({len(params)})</summary>"
    body += h.table(params, ["setting", "value"]) + "</details>"
    if "plots/data_preview.png" in run.images:
        body += h.image(
            run.images["plots/data_preview.png"], "the training data: crops by class and day"
        )
    return h.Section("provenance", "What was trained on what data", body)


def accuracy(run: RunData, n_boot: int, level: float) -> h.Section:
    """Accuracy by day with bootstrap intervals over the test cells, against the latent oracle."""
    headline = [(k, run.metrics[k]) for k in HEADLINE if k in run.metrics]
    body = h.table(headline, ["metric", "value"])
    cells = run.tables.get("cells")
    if cells is None or not len(cells):
        body += h.paragraph(
            "This run logged no per-cell predictions (predictions/cells.csv), "
            "so accuracy by day has no interval here.",
            note=True,
        )
        return h.Section("accuracy", "Accuracy by day against the oracle", body)
    by_day = accuracy_intervals(cells, n_boot, level)
    oracle = oracle_by_day(run.metrics, list(by_day["day"]))
    by_day["oracle"] = [oracle.get(d, float("nan")) for d in by_day["day"]]
    by_day["day"] = [int(d) if float(d).is_integer() else d for d in by_day["day"]]
    body += h.image(
        png_bytes(accuracy_figure(by_day, oracle, level)),
        f"test accuracy per day, {level:.0%} bootstrap interval over cells "
        f"({n_boot} rounds); the latent oracle is the ceiling",
    )
    body += h.frame(by_day)
    if not oracle:
        body += h.paragraph("No latent oracle: the data are not synthetic.", note=True)
    return h.Section("accuracy", "Accuracy by day against the oracle", body)


def confusion(run: RunData) -> h.Section:
    """The logged test confusion matrix."""
    png = run.images.get("plots/confusion_matrix.png")
    body = (
        h.image(png, "test confusion matrix (rows: true fate)")
        if png
        else h.paragraph("This run logged no confusion matrix.", note=True)
    )
    return h.Section("confusion", "Confusion matrix", body)


def calibration(run: RunData) -> h.Section:
    """The logged reliability diagram, before and after calibration, with the ECEs."""
    rows = [
        (k, run.metrics[k]) for k in (TEST_ECE_RAW, TEST_ECE, TEST_ECE_FLOOR) if k in run.metrics
    ]
    method = run.params.get("calibration.method", "?")
    body = h.paragraph(
        f"Calibration ({method}) fit on the validation split; expected calibration "
        "error (15 bins) on the test split before and after, and the floor: what a perfectly "
        "calibrated model would measure on this many cells (binned ECE is biased upward on a "
        "finite set)."
    )
    body += h.table(rows, ["metric", "value"])
    png = run.images.get("plots/reliability.png")
    body += (
        h.image(png, "calibration (reliability) diagram")
        if png
        else h.paragraph("This run logged no reliability diagram.", note=True)
    )
    return h.Section("calibration", "Calibration", body)


def fractions(run: RunData) -> h.Section:
    """Fate fractions per held-out condition: counted, corrected with interval, OOD share, true."""
    table = run.tables.get("fate_fractions")
    if table is None or not len(table):
        body = h.paragraph(
            "This run evaluated no held-out condition, so there is no fate fraction "
            "to show (data.split.holdout_conditions).",
            note=True,
        )
        return h.Section("fractions", "Fate fractions per condition", body)
    summary = [
        (k, run.metrics[k]) for k in (*FRACTION_SUMMARY, ORACLE_FRAC_MAE) if k in run.metrics
    ]
    body = h.paragraph(
        "Per held-out condition: the counted fraction (argmax), the fraction "
        "corrected for prior shift with its 95 % bootstrap interval, the share of "
        "cells flagged out of distribution, and the true fraction where known."
    )
    png = run.images.get("plots/fate_fractions.png")
    if png:
        body += h.image(png, "fate fractions per condition")
    body += h.frame(table) + h.table(summary, ["fraction error", "value"])
    return h.Section("fractions", "Fate fractions per condition", body)


def activation_maps(run: RunData) -> h.Section:
    """The class-activation-map galleries the run logged (``cam/*.png``)."""
    pngs = {k: v for k, v in run.images.items() if k.startswith("cam/")}
    if not pngs:
        body = h.paragraph("This run logged no activation maps (cam/).", note=True)
    else:
        body = h.paragraph("Grad-CAM of the predicted fate over test crops, per true fate and day.")
        body += "".join(h.image(png, path) for path, png in sorted(pngs.items()))
    return h.Section("cam", "Activation maps", body)


def run_sections(run: RunData, n_boot: int, level: float) -> list[h.Section]:
    """Every section of a run's report, in reading order."""
    return [
        provenance(run),
        accuracy(run, n_boot, level),
        confusion(run),
        calibration(run),
        fractions(run),
        activation_maps(run),
    ]
