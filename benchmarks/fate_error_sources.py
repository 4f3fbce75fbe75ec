"""Where does a trained model's fate-fraction error come from: the inducers' microscope or the model?

    python benchmarks/fate_error_sources.py --checkpoint CKPT [CKPT ...]
        [--variants ";inducer_shift=0;inducer_shift=0,confound=0"]
        [--out benchmarks/results/fate_error_sources.json]

Each checkpoint (``<run dir>/checkpoints/best-*.ckpt``) is a run on the built-in synthetic data
(e.g. ``nscfate-train experiment=cpu_baseline``, or the runs ``benchmarks/fate_estimates.py``
leaves under its temporary directory, one per training seed); the record keeps every checkpoint's
lines and their mean per variant. Each model and its saved calibration are evaluated on the data it
was trained with and on the same cells regenerated with other generator settings (``--variants``): by
default ``inducer_shift=0`` (the inducer conditions imaged like control: same morphology, no extra
defocus, NA loss or camera noise) and, in addition, ``confound=0`` (control cultures no longer
imaged at a brightness that follows their fate: the inducer conditions stay as they were, the test
split loses the shortcut). If the error stays without the shift, the microscope shift is not what
limits it; if test accuracy falls without the confound, the model reads it. Any other setting works
the same way: ``--variants batches_per_group=5`` puts models trained on data spread over more
cultures before the benchmark's own layout of 5 cultures per group; on a changed variant the line
also gives the error with calibration and correction refit on that data's own test split (12
cultures on that layout, as the demo's validation split), which separates what the model brings from
what its reference of many validation cultures brings. Each line: accuracy on
the test split and on the inducer conditions, the fraction error (estimated and counted), and the
latent oracle's fraction error on the same split (its posteriors through the same correction); and
the error of plates that differ from control by their fate mix alone: each inducer condition
rebuilt from test cells of the same fates and days, so that label shift holds exactly
(``label_shift_floor_*``: finite cells, and test cultures that are not the validation ones; what the
inducer plates err above it comes from their own cultures and imaging as this network reads them).

On the data as generated, two more questions about the correction's reference (the validation
cells it learns the model's errors from, one culture per fate and day):

- does learning it from twice the cultures (validation and test together) lower the error?
- bootstrap intervals that resample cultures (validation cultures within each fate, the condition's
  cultures) instead of cells: how often do they hold the truth, and how wide are they?
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from nscfate.data.datamodule import CellDataModule
from nscfate.data.schema import CLASSES
from nscfate.data.splits import INDEP, TEST, VAL, rows_of
from nscfate.estimation import EstimationSettings, fit_estimator
from nscfate.estimation.quantify import estimate
from nscfate.evaluation.checkpoint import evaluate_checkpoint, load_checkpoint
from nscfate.evaluation.evaluate import (
    FRAC_MAE,
    FRAC_MAX_ERR,
    LOGIT_COLUMNS,
    fate_fractions,
    fraction_metrics,
    oracle_scores,
)
from nscfate.files import atomic_write


def parse_changes(text: str) -> dict[str, int | float]:
    """Generator changes from the command line: ``key=value[,key=value]`` (empty: none)."""
    return {k: number(v) for k, v in (kv.split("=") for kv in text.split(",") if kv)}


def regenerated(checkpoint: Path, changes: dict[str, float], data_dir: Path) -> DictConfig:
    """The data config of ``checkpoint``'s run with the generator ``changes``, its store under
    ``data_dir`` in a folder named by the changes (runs with the same settings share it)."""
    data = OmegaConf.create(load_checkpoint(checkpoint)["nscfate_config"]).data
    if not data.get("synthetic"):
        sys.exit(f"{checkpoint}: not a run on the built-in synthetic data")
    for key, value in changes.items():
        data.synthetic[key] = value
    data.path = str(data_dir / ("_".join(f"{k}{v:g}" for k, v in changes.items()) or "as_trained"))
    return data


def figures(checkpoint: Path, changes: dict[str, float], data_dir: Path) -> dict:
    """Evaluate ``checkpoint`` on its synthetic data regenerated with the generator ``changes``
    (e.g. ``{"inducer_shift": 0}``; empty: as trained)."""
    data = regenerated(checkpoint, changes, data_dir)
    evaluation, _ = evaluate_checkpoint(checkpoint, data=data)
    m, cells = evaluation.metrics, evaluation.cells
    indep = cells[cells["split"].str.startswith(INDEP)]
    datamodule = CellDataModule(
        **{k: v for k, v in OmegaConf.to_container(data).items() if k[0] != "_"}
    )
    datamodule.setup("test")
    oracle = oracle_scores(datamodule, evaluation.estimator.settings)  # the same correction
    reference = (
        reference_questions(evaluation, datamodule)
        if not changes
        else own_test_reference(evaluation.estimator.settings, evaluation.cells)
    )
    reference |= label_shift_floor(evaluation)
    return reference | {
        "data": changes,
        "inducer_shift": changes.get("inducer_shift", 1.0),
        "test_acc": round(m["test/acc"], 4),
        "n_test": int((cells["split"] == TEST).sum()),
        # calibration on this split: saved calibration, none, and what a calibrated model would show
        "test_ece": round(m["test/ece"], 4),
        "test_ece_uncalibrated": round(m["test/ece_uncalibrated"], 4),
        "test_ece_floor": round(m["test/ece_floor"], 4),
        "test_ood_frac": round(m["test/ood_frac"], 4),  # share flagged, for the run's chosen rate
        "indep_acc": round(float((indep["predicted"] == indep["label"]).mean()), 4),
        "frac_mae": round(m["indep/frac_mae"], 4),
        "frac_max_err": round(m["indep/frac_max_err"], 4),
        "frac_mae_raw": round(m["indep/frac_mae_raw"], 4),
        "oracle_frac_mae": round(oracle["frac_mae"], 4),
        "oracle_frac_max_err": round(oracle["frac_max_err"], 4),
    }


def culture_rows(rng: np.random.Generator, batches: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Rows of one bootstrap draw over cultures, drawn within each fate (a control culture is one
    fate)."""
    rows = []
    for k in np.unique(labels):
        cultures = np.unique(batches[labels == k])
        rows += [np.flatnonzero(batches == b) for b in rng.choice(cultures, len(cultures))]
    return np.concatenate(rows)


CODES = {c: i for i, c in enumerate(CLASSES)}


def inducer_groups(cells: pd.DataFrame) -> tuple[list[pd.DataFrame], np.ndarray]:
    """The held-out conditions' cells, one frame per condition, and their true fate fractions
    (conditions x fates, from the cells' labels)."""
    groups = [g for _, g in cells[cells["split"].str.startswith(INDEP)].groupby("condition")]
    truth = np.stack(
        [
            g["label"].map(CODES).value_counts(normalize=True).reindex(CODES.values(), fill_value=0)
            for g in groups
        ]
    )
    return groups, truth


def refit_estimates(
    settings: EstimationSettings,
    ref_logits: np.ndarray,
    ref_labels: np.ndarray,
    groups: list[pd.DataFrame],
) -> np.ndarray:
    """Point estimates (conditions x fates) with calibration and correction refit on a reference
    (the run's methods, no bootstrap)."""
    refit = fit_estimator(replace(settings, n_boot=0), ref_logits, ref_labels)
    return np.stack([refit.fractions(g[LOGIT_COLUMNS].to_numpy()).estimate for g in groups])


def own_test_reference(settings: EstimationSettings, cells: pd.DataFrame) -> dict:
    """Fraction error with calibration and correction refit on the evaluated data's own test split
    instead of the validation cells saved with the run. On a layout of 5 cultures per group that
    split is 12 cultures, as the demo's validation split: a model trained on more cultures,
    corrected as the demo's is, shows what the model itself brings apart from its reference."""
    test = cells[cells["split"] == TEST]
    refit = fit_estimator(
        replace(settings, n_boot=0),
        test[LOGIT_COLUMNS].to_numpy(),
        test["label"].map(CODES).to_numpy(),
    )
    indep = cells[cells["split"].str.startswith(INDEP)]
    metrics = fraction_metrics(fate_fractions(indep, refit))  # as a run's indep/frac_mae
    return {
        "reference_own_test_frac_mae": round(metrics[FRAC_MAE], 4),
        "reference_own_test_frac_max_err": round(metrics[FRAC_MAX_ERR], 4),
    }


def reference_questions(evaluation, datamodule, rounds: int = 200) -> dict:
    """Fraction error with the correction learned from validation + test cultures; coverage and
    half-width of a bootstrap over cultures (seeded)."""
    est, cells = evaluation.estimator, evaluation.cells
    test = cells[cells["split"] == TEST]
    groups, truth = inducer_groups(cells)

    ref_logits = np.r_[est.val_logits, test[LOGIT_COLUMNS].to_numpy()]
    ref_labels = np.r_[est.val_labels, test["label"].map(CODES).to_numpy()]
    both = np.abs(refit_estimates(est.settings, ref_logits, ref_labels, groups) - truth)
    val_batches = datamodule.store.index["batch"].to_numpy()[rows_of(datamodule.split, VAL)]
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(rounds):
        pick = culture_rows(rng, val_batches, est.val_labels)
        resampled = [
            g.iloc[culture_rows(rng, g["batch"].to_numpy(), np.zeros(len(g)))] for g in groups
        ]
        draws.append(
            refit_estimates(est.settings, est.val_logits[pick], est.val_labels[pick], resampled)
        )
    low, high = np.quantile(np.stack(draws), [0.025, 0.975], axis=0)
    return {
        "reference_val_and_test_frac_mae": round(float(both.mean()), 4),
        "reference_val_and_test_frac_max_err": round(float(both.max()), 4),
        "culture_bootstrap_coverage": round(float(((low <= truth) & (truth <= high)).mean()), 3),
        "culture_bootstrap_half_width": round(float(((high - low) / 2).mean()), 4),
    }


def label_shift_floor(evaluation, rounds: int = 100) -> dict:
    """The fraction error of plates that differ from control by their fate mix alone: each inducer
    condition rebuilt from the test split's cells (drawn with replacement, the same number of each
    fate on each day as the condition has), so label shift holds exactly, then estimated with the
    run's own calibration and correction. What is left is the finite cells and the test cultures
    being other cultures than the validation ones the correction learned from. Seeded; mean over
    ``rounds`` rebuilds of the error over conditions x fates."""
    est, cells = evaluation.estimator, evaluation.cells
    test = cells[cells["split"] == TEST]
    pools = dict(tuple(test.groupby(["label", "day"])))
    groups, truth = inducer_groups(cells)
    rng = np.random.default_rng(0)
    mae, worst = [], []
    for _ in range(rounds):
        errors = []
        for group, true in zip(groups, truth, strict=True):
            parts = [
                pools[key].iloc[rng.integers(0, len(pools[key]), len(g))]
                for key, g in group.groupby(["label", "day"])
            ]
            rebuilt = pd.concat(parts)
            days = rebuilt["day"].to_numpy(dtype=np.float64)
            probs = est.probabilities(rebuilt[LOGIT_COLUMNS].to_numpy(), days)
            errors.append(np.abs(estimate(est.settings.quantify, probs, est.reference) - true))
        mae.append(np.mean(errors))
        worst.append(np.max(errors))
    return {
        "label_shift_floor_frac_mae": round(float(np.mean(mae)), 4),
        "label_shift_floor_frac_max_err": round(float(np.mean(worst)), 4),
    }


def report(variant: str, r: dict) -> None:
    """Print one evaluation's line (and the reference questions' when it has them)."""
    if "reference_own_test_frac_mae" in r:
        print(
            f"calibration and correction refit on this data's test split: fraction error "
            f"{r['reference_own_test_frac_mae']:.3f} (worst "
            f"{r['reference_own_test_frac_max_err']:.3f})",
            flush=True,
        )
    if "culture_bootstrap_coverage" in r:
        print(
            f"correction learned from validation + test cultures: fraction error "
            f"{r['reference_val_and_test_frac_mae']:.3f} (worst "
            f"{r['reference_val_and_test_frac_max_err']:.3f}) | bootstrap over cultures: "
            f"coverage {r['culture_bootstrap_coverage']:.0%}, half-width "
            f"{r['culture_bootstrap_half_width']:.3f}",
            flush=True,
        )
    print(
        f"label shift alone (inducer plates rebuilt from test cells): fraction error "
        f"{r['label_shift_floor_frac_mae']:.3f} (worst {r['label_shift_floor_frac_max_err']:.3f})",
        flush=True,
    )
    print(
        f"{variant or 'as trained'}: accuracy test {r['test_acc']:.3f}, inducers "
        f"{r['indep_acc']:.3f} | fraction error {r['frac_mae']:.3f} (worst "
        f"{r['frac_max_err']:.3f}, counted {r['frac_mae_raw']:.3f}) | oracle "
        f"{r['oracle_frac_mae']:.3f} (worst {r['oracle_frac_max_err']:.3f})",
        flush=True,
    )


def summarise(runs: list[list[dict]], variants: list[str]) -> dict:
    """Per variant, the mean over checkpoints of every figure (and the per-checkpoint list)."""
    summary = {}
    for i, variant in enumerate(variants):
        lines = [checkpoint[i] for checkpoint in runs]
        keys = [k for k, v in lines[0].items() if isinstance(v, float) and k != "inducer_shift"]
        summary[variant or "as trained"] = {
            k: {
                "mean": round(float(np.mean([r[k] for r in lines])), 4),
                "each": [r[k] for r in lines],
            }
            for k in keys
        }
    return summary


def number(text: str) -> int | float:
    """A generator setting's value from the command line: an int where it is one (a count)."""
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, nargs="+", required=True)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/fate_error_sources.json")
    )
    parser.add_argument(
        "--variants",
        default=";inducer_shift=0;inducer_shift=0,confound=0",
        help="';'-separated generator changes, each 'key=value[,key=value]' (empty: as trained)",
    )
    args = parser.parse_args()
    variants = args.variants.split(";")
    runs = []
    # One data directory per variant, shared by the checkpoints (same generator settings).
    with tempfile.TemporaryDirectory() as tmp:
        for checkpoint in args.checkpoint:
            print(f"{checkpoint}:", flush=True)
            results = []
            for variant in variants:
                results.append(figures(checkpoint, parse_changes(variant), Path(tmp)))
                report(variant, results[-1])
            runs.append(results)
    summary = summarise(runs, variants)
    for variant, figs in summary.items():
        print(
            f"mean over {len(runs)} checkpoint(s), {variant}: fraction error "
            f"{figs['frac_mae']['mean']:.3f} (worst {figs['frac_max_err']['mean']:.3f}), accuracy "
            f"test {figs['test_acc']['mean']:.3f}, inducers {figs['indep_acc']['mean']:.3f}"
        )
    record = {
        "command": " ".join(sys.argv),
        "checkpoints": [str(c) for c in args.checkpoint],
        "summary": summary,
        "runs": runs,
    }
    with atomic_write(args.out) as tmp_out:
        tmp_out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
