"""Which part of a culture's acquisition moves the model's fate counts on the inducer cultures?

    python benchmarks/culture_bias.py --reuse URI [--seeds 0,1,2,3,4]
                                      [--out benchmarks/results/culture_bias.json]

``URI`` is the tracking store a ``benchmarks/fate_estimates.py`` invocation left its runs in. For
each seed's demo run and each inducer culture (one acquisition: level, gain, defocus, NA, full well,
read noise, stretch), the excess of each counted fate over the culture's true share (from the run's
``predictions/cells.csv``), then the Spearman correlation over the cultures between that excess
and each acquisition parameter, and with the culture's mean maturity (biology, not the microscope).
Then, over the seeds, the error of each condition's shipped estimate (``est_frac - true_frac``) and
its mean over seeds: the part every training seed shares, which more seeds or an ensemble would
not average away. And whether a few outlying cultures carry a condition's error: each culture
estimated on its own (the run's calibration and method), then the median, or the mean without the
top and bottom 20 %, over the condition's cultures, against the estimate from all its cells at once.
The acquisition and maturity come from regenerating the synthetic index (no pixels); they are read
here to explain the errors, never by training or estimation.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from scipy.stats import trim_mean

from nscfate.data.schema import CLASSES
from nscfate.data.synthetic import ACQUISITION_PREFIX, SynthSettings, describe
from nscfate.estimation import FateEstimator, fit_estimator
from nscfate.evaluation.evaluate import LOGIT_COLUMNS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fate_estimates import (  # noqa: E402  (a sibling script)
    reuse_parser,
    run_synth_settings,
    run_tables,
    saved_estimator,
    seed_run,
    write_reuse_report,
)

FACTORS = ("stretch", "defocus_um", "na", "full_well", "read_noise", "level", "gain")


@functools.cache
def synthetic_index(settings: SynthSettings) -> pd.DataFrame:
    """The generator's index for these settings (every seed's run shares one dataset)."""
    return describe(settings)


def culture_table(run: mlflow.entities.Run, cells: pd.DataFrame) -> pd.DataFrame:
    """One row per inducer culture: counted-minus-true share of each fate, acquisition, maturity."""
    index = synthetic_index(run_synth_settings(run.data.params))
    cells = cells[cells["split"].str.startswith("indep:")].join(
        index[[ACQUISITION_PREFIX + f for f in FACTORS] + ["lat_maturity"]], on="row"
    )
    for k in CLASSES:
        cells[f"excess_{k}"] = (cells["predicted"] == k).astype(float) - (cells["label"] == k)
    columns = [f"excess_{k}" for k in CLASSES] + [ACQUISITION_PREFIX + f for f in FACTORS]
    return cells.groupby("batch")[columns + ["lat_maturity"]].mean()


def estimate_errors(fractions: pd.DataFrame) -> pd.Series:
    """A run's corrected estimate minus the truth, per inducer condition and fate."""
    known = fractions.dropna(subset=["true_frac"])
    return known.set_index(["condition", "fate"]).eval("est_frac - true_frac")


def shared_error(errors: list[pd.Series]) -> dict:
    """Fraction error per seed against that of the estimates' mean over seeds."""
    mean = pd.concat(errors, axis=1).mean(axis=1)
    return {
        "frac_mae_per_seed": [round(float(e.abs().mean()), 4) for e in errors],
        "frac_mae_of_seed_mean": round(float(mean.abs().mean()), 4),
        "frac_max_err_of_seed_mean": round(float(mean.abs().max()), 4),
        "seed_mean_error": {f"{c}/{k}": round(float(v), 3) for (c, k), v in mean.items()},
    }


def point_estimator(run: mlflow.entities.Run) -> FateEstimator:
    """The run's saved estimator, refitted for point estimates only (no bootstrap)."""
    saved = saved_estimator(run)
    settings = replace(saved.settings, n_boot=0)
    return fit_estimator(settings, saved.val_logits, saved.val_labels)


def culture_aggregates(cells: pd.DataFrame, estimator: FateEstimator) -> dict:
    """Fraction error (mean, worst over conditions x fates) of the estimate from all a condition's
    cells and of the median / trimmed mean of its cultures' own estimates."""
    errors: dict[str, list[float]] = {"all_cells": [], "culture_median": [], "culture_trimmed": []}
    for _, group in cells[cells["split"].str.startswith("indep:")].groupby("condition"):
        truth = group["label"].value_counts(normalize=True).reindex(CLASSES, fill_value=0)
        per_culture = np.stack(
            [
                estimator.fractions(culture[LOGIT_COLUMNS].to_numpy()).estimate
                for _, culture in group.groupby("batch")
            ]
        )
        estimates = {
            "all_cells": estimator.fractions(group[LOGIT_COLUMNS].to_numpy()).estimate,
            "culture_median": np.median(per_culture, axis=0),
            "culture_trimmed": trim_mean(per_culture, 0.2, axis=0),  # 20 % off each end
        }
        for name, est in estimates.items():
            errors[name] += list(np.abs(est / est.sum() - truth.to_numpy()))
    return {
        name: {"frac_mae": round(float(np.mean(e)), 4), "frac_max_err": round(float(np.max(e)), 4)}
        for name, e in errors.items()
    }


def correlations(table: pd.DataFrame) -> dict:
    """Spearman correlation of each fate's excess with each acquisition factor and maturity."""
    factors = {f: ACQUISITION_PREFIX + f for f in FACTORS} | {"maturity": "lat_maturity"}
    return {
        k: {
            name: round(float(table[f"excess_{k}"].corr(table[col], method="spearman")), 2)
            for name, col in factors.items()
        }
        for k in CLASSES
    }


def main() -> None:
    parser = reuse_parser(__doc__, "culture_bias.json")
    args = parser.parse_args()
    client = MlflowClient(args.reuse)
    mlflow.set_tracking_uri(args.reuse)
    runs, errors = [], []
    for seed in (int(s) for s in args.seeds.split(",")):
        run = seed_run(args.reuse, seed)
        cells, fractions = run_tables(client, run.info.run_id)
        errors.append(estimate_errors(fractions))
        table = culture_table(run, cells)
        excess = table[[f"excess_{k}" for k in CLASSES]].abs().mean()
        runs.append(
            {
                "seed": seed,
                "n_cultures": len(table),
                "mean_abs_excess": {k: round(float(excess[f"excess_{k}"]), 3) for k in CLASSES},
                "spearman": correlations(table),
                "aggregates": culture_aggregates(cells, point_estimator(run)),
            }
        )
        print(json.dumps(runs[-1]), flush=True)
    mean = {
        k: {
            f: round(float(np.mean([r["spearman"][k][f] for r in runs])), 2)
            for f in runs[0]["spearman"][k]
        }
        for k in CLASSES
    }
    aggregates = {
        name: {
            k: round(float(np.mean([r["aggregates"][name][k] for r in runs])), 4)
            for k in ("frac_mae", "frac_max_err")
        }
        for name in runs[0]["aggregates"]
    }
    summary = {
        "spearman_mean_over_seeds": mean,
        "estimates": shared_error(errors),
        "aggregates_mean_over_seeds": aggregates,
    }
    write_reuse_report("culture_bias.py", args, "summary", summary, runs)


if __name__ == "__main__":
    main()
