"""How right are the fate fractions, how sure, and which crops are unlike the training data?

    python benchmarks/fate_estimates.py [--seeds 0,1,2,3,4] [--reuse URI]
                                        [--out benchmarks/results/fate_estimates.json]

For each training seed, one real ``nscfate-train experiment=cpu_baseline seed=S`` process (the
demo), then, from what that run logged (its metrics, per-cell predictions and pyfunc model):

- the shipped estimates: ``indep/frac_mae`` / ``frac_max_err`` next to ``frac_mae_raw``, ``test/ece``
  before and after calibration, interval coverage (share of condition x fate intervals holding the
  truth) and mean half-width;
- every calibration x quantification method on the same logits (point estimates), so the default
  is chosen by measurement;
- OOD: AUROC of the pyfunc's ``ood_score`` between in-distribution test crops and blank crops,
  pure noise, non-cell crops (cut from the sample photographs scikit-learn and matplotlib ship) and
  fluorescence-like crops (a bright cell on black); the flag rate on the test crops; the share of
  the six real crops in ../shared/samples/zhu2021 flagged.

The generator's inducer proportions and microscope shift are the truth; nothing here feeds them
to training or estimation. ``--reuse URI`` re-analyses the runs already in a tracking store.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
import yaml
from mlflow import MlflowClient
from PIL import Image
from sklearn.metrics import roc_auc_score
from torchmetrics.functional.classification import multiclass_calibration_error

from nscfate.data.schema import CLASSES
from nscfate.data.store import open_store
from nscfate.data.synthetic import SynthSettings
from nscfate.data.synthetic_cache import synth_settings
from nscfate.estimation import EstimationSettings, FateEstimator, fit_estimator
from nscfate.estimation.calibration import METHODS as CALIBRATIONS
from nscfate.estimation.calibration import fit_day_calibration
from nscfate.estimation.quantify import METHODS, RESAMPLING, Reference, estimate
from nscfate.evaluation.evaluate import LOGIT_COLUMNS
from nscfate.files import atomic_write

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "samples" / "zhu2021"
EXPERIMENT = "fate-estimates"


def train(seed: int, uri: str, tmp: Path, overrides: list[str]) -> str:
    """One demo run with training seed ``seed`` (and extra Hydra overrides); returns its run id."""
    cmd = [
        sys.executable,
        "-m",
        "nscfate.cli.train",
        "experiment=cpu_baseline",
        f"seed={seed}",
        f"tracking.uri={uri}",
        f"tracking.experiment={EXPERIMENT}",
        f"tracking.run_name=seed{seed}",
        f"hydra.run.dir={tmp}/run-{seed}",
        "trainer.enable_progress_bar=false",
        "~callbacks.rich_progress_bar",
        *overrides,
    ]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"seed {seed} failed: {proc.stderr[-2000:]}")
    print(f"seed {seed}: trained in {time.time() - start:.0f} s", flush=True)
    runs = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name(EXPERIMENT).experiment_id],
        f"tags.mlflow.runName = 'seed{seed}'",
        order_by=["attributes.start_time DESC"],
    )
    return runs[0].info.run_id


def seed_run(uri: str, seed: int) -> mlflow.entities.Run:
    """The latest run of training seed ``seed`` in a store this script filled."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.mlflow.runName = 'seed{seed}'",
        order_by=["attributes.start_time DESC"],
    )
    return runs[0]


def run_tables(client: MlflowClient, run_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A run's per-cell predictions and its fate-fraction table (``true_frac`` NaN where unknown)."""
    with tempfile.TemporaryDirectory() as tmp:
        cells = pd.read_csv(
            client.download_artifacts(run_id, "predictions/cells.csv", tmp), keep_default_na=False
        )
        fractions = pd.read_csv(
            client.download_artifacts(run_id, "predictions/fate_fractions.csv", tmp)
        )
    return cells, fractions


def saved_estimator(run: mlflow.entities.Run) -> FateEstimator:
    """The estimator a run saved in its pyfunc model (the tracking URI must be set)."""
    model = mlflow.pyfunc.load_model(run.data.tags["nscfate.model_uri"])
    return model.unwrap_python_model().estimator


def reuse_parser(doc: str, record: str) -> argparse.ArgumentParser:
    """Command line of a benchmark that re-analyses the runs this script left in a store."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(
        "--reuse", required=True, help="the store fate_estimates.py left its runs in"
    )
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results" / record))
    return parser


def write_reuse_report(
    script: str, args: argparse.Namespace, summary_key: str, summary: dict, runs: list
) -> None:
    """Write a re-analysis record (replaced whole, never half-written) and print its summary."""
    report = {
        "command": f"python benchmarks/{script} --reuse <store of fate_estimates.py> "
        f"--seeds {args.seeds}",
        summary_key: summary,
        "runs": runs,
    }
    with atomic_write(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"-> {args.out}")


def shipped(run: mlflow.entities.Run, fractions: pd.DataFrame) -> dict:
    """The run's own figures (default calibration and method) and its interval coverage."""
    m = run.data.metrics
    hit = (fractions["ci_low"] <= fractions["true_frac"]) & (
        fractions["true_frac"] <= fractions["ci_high"]
    )
    half = (fractions["ci_high"] - fractions["ci_low"]) / 2
    keys = ["indep/frac_mae_raw", "indep/frac_mae", "indep/frac_max_err", "test/ece"]
    keys += ["test/ece_uncalibrated", "test/ood_frac", "test/f1_macro", "test/acc"]
    return {k: round(m[k], 4) for k in keys} | {
        "coverage": round(float(hit.mean()), 3),
        "n_intervals": int(len(hit)),
        "half_width_mean": round(float(half.mean()), 4),
        "half_width_max": round(float(half.max()), 4),
    }


def method_grid(cells: pd.DataFrame, estimator: FateEstimator) -> dict:
    """Point-estimate error of every calibration (pooled, and ``<method>_by_day``: a map per day
    of culture) x quantification method on the same logits."""
    indep = cells[cells["split"].str.startswith("indep:")]
    test = cells[cells["split"] == "test"]
    days = lambda frame: frame["day"].to_numpy(dtype=np.float64)  # noqa: E731
    out = {}
    for calibration_method, by_day in [(c, d) for c in CALIBRATIONS for d in (False, True)]:
        if by_day and (calibration_method == "none" or estimator.val_days is None):
            continue
        name = calibration_method + ("_by_day" if by_day else "")
        cal = fit_day_calibration(
            estimator.val_logits,
            estimator.val_labels,
            estimator.val_days,
            calibration_method,
            by_day,
        )
        ref = Reference(
            cal.probabilities(estimator.val_logits, estimator.val_days), estimator.val_labels
        )
        probs = torch.tensor(cal.probabilities(test[LOGIT_COLUMNS].to_numpy(), days(test)))
        target = torch.tensor(test["label"].map(CLASSES.index).to_numpy())
        ece = multiclass_calibration_error(probs, target, len(CLASSES), n_bins=15, norm="l1")
        out[f"ece_{name}"] = round(float(ece), 4)
        for method in METHODS:
            errors = []
            for _, group in indep.groupby("condition"):
                truth = group["label"].value_counts(normalize=True).reindex(CLASSES, fill_value=0)
                probs = cal.probabilities(group[LOGIT_COLUMNS].to_numpy(), days(group))
                est = estimate(method, probs, ref)
                errors += list(np.abs(est - truth.to_numpy()))
            out[f"{name}+{method}"] = {
                "mae": round(float(np.mean(errors)), 4),
                "max_err": round(float(np.max(errors)), 4),
            }
    return out


def run_synth_settings(params: dict[str, str]) -> SynthSettings:
    """The generator settings a run trained on, from every ``data.synthetic.*`` param it logged
    (through :func:`synth_settings`, as the run built them; a key older runs lack keeps its default)."""
    prefix = "data.synthetic."
    logged = {
        k.removeprefix(prefix): yaml.safe_load(v) for k, v in params.items() if k.startswith(prefix)
    }
    return synth_settings({k: None if v == "None" else v for k, v in logged.items()})


def oracle_grid(run: mlflow.entities.Run, seed: int) -> dict:
    """The latent oracle's fraction error on the run's own split after each calibration (EM): the
    floor each calibration leaves. The cells' latents are regenerated (no pixels)."""
    from nscfate.data.oracle import fit_oracle
    from nscfate.data.splits import SplitSpec, make_split
    from nscfate.data.synthetic import describe
    from nscfate.evaluation.evaluate import oracle_fraction_errors

    settings = run_synth_settings(run.data.params)
    index = describe(settings)
    conditions = tuple(name for name, _ in settings.conditions)
    fractions = {k: float(run.data.params.get(f"data.split.{k}", 0.15)) for k in ("val", "test")}
    split = make_split(index, SplitSpec(**fractions, seed=seed, holdout_conditions=conditions))
    model = fit_oracle(index, split)
    return {
        calibration: {
            k: round(v, 4)
            for k, v in oracle_fraction_errors(
                model, index, split, EstimationSettings(calibration=calibration)
            ).items()
        }
        for calibration in CALIBRATIONS
    }


#: Calibration + method / resampling whose intervals are also measured (coverage, half-width):
#: ``cultures`` resamples the validation cultures and the condition's, ``val_cultures`` the
#: validation cultures only (the condition's cells), ``cells`` cells on both sides.
INTERVAL_CANDIDATES = tuple(
    f"{pair}/{resample}"
    for pair in ("ts+emq", "bcts+emq", "vs+emq", "bcts+pacc")
    for resample in (*RESAMPLING, "val_cultures")
)


def interval_grid(cells: pd.DataFrame, estimator: FateEstimator) -> dict:
    """Coverage and half-width of the bootstrap intervals of a few candidate defaults."""
    indep = cells[cells["split"].str.startswith("indep:")]
    out = {}
    for pair in INTERVAL_CANDIDATES:
        calibration, method, resample = pair.replace("/", "+").split("+")
        settings = EstimationSettings(
            calibration=calibration,
            calibrate_by_day=estimator.settings.calibrate_by_day,
            quantify=method,
            resample=resample.removeprefix("val_"),
        )
        candidate = fit_estimator(
            settings,
            estimator.val_logits,
            estimator.val_labels,
            val_cultures=estimator.val_cultures,
            val_days=estimator.val_days,
        )
        hits, halves, errors = [], [], []
        for i, (_, group) in enumerate(indep.groupby("condition")):
            truth = group["label"].value_counts(normalize=True).reindex(CLASSES, fill_value=0)
            cultures = None if resample == "val_cultures" else group["batch"].to_numpy()
            interval = candidate.fractions(
                group[LOGIT_COLUMNS].to_numpy(),
                seed=i,
                cultures=cultures,
                days=group["day"].to_numpy(dtype=np.float64),
            )
            truth = truth.to_numpy()
            hits += list((interval.low <= truth) & (truth <= interval.high))
            halves += list((interval.high - interval.low) / 2)
            errors += list(np.abs(interval.estimate - truth))
        out[pair] = {
            "mae": round(float(np.mean(errors)), 4),
            "coverage": round(float(np.mean(hits)), 3),
            "half_width_mean": round(float(np.mean(halves)), 4),
        }
    return out


def grey(path: Path) -> np.ndarray:
    """An image file as 8-bit grey."""
    return np.asarray(Image.open(path).convert("L"))


def probe_sets(size: int, background: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Crops no bright-field cell model should recognise (uint8, N x size x size)."""
    n = 200
    blank = np.clip(background + rng.normal(0, 1.0, (n, size, size)), 0, 255)
    noise = rng.integers(0, 256, (n, size, size)).astype(np.float64)
    import matplotlib.cbook
    import sklearn.datasets

    photos = [grey(Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))]
    photos += [
        np.asarray(Image.fromarray(img).convert("L"))
        for img in sklearn.datasets.load_sample_images().images
    ]
    scenes = []
    for i in range(n):
        photo = photos[i % len(photos)]
        y, x = (
            rng.integers(0, photo.shape[0] - 4 * size),
            rng.integers(0, photo.shape[1] - 4 * size),
        )
        patch = Image.fromarray(photo[y : y + 4 * size, x : x + 4 * size]).resize((size, size))
        scenes.append(np.asarray(patch, dtype=np.float64))
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    fluo = []
    for _ in range(n):
        a, b = rng.uniform(5, 12, 2)
        theta = rng.uniform(0, np.pi)
        u = xx * np.cos(theta) + yy * np.sin(theta)
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        cell = np.exp(-(((u / a) ** 2 + (v / b) ** 2) ** 1.5)) * rng.uniform(150, 250)
        fluo.append(np.clip(cell + rng.normal(5, 3, (size, size)), 0, 255))
    return {
        "blank": blank,
        "noise": noise,
        "non_cell_photos": np.stack(scenes),
        "fluorescence_like": np.stack(fluo),
    }


def ood_figures(run: mlflow.entities.Run, cells: pd.DataFrame, rng: np.random.Generator) -> dict:
    """AUROC of the pyfunc's OOD score: in-distribution test crops vs each probe set."""
    model = mlflow.pyfunc.load_model(run.data.tags["nscfate.model_uri"])
    store = open_store(run.data.tags["nscfate.dataset_path"])
    test_rows = np.sort(cells.loc[cells["split"] == "test", "row"].to_numpy())
    crops = np.asarray(store.images[test_rows]).astype(np.float32)
    inside = model.predict(crops)
    size = crops.shape[1]
    background = float(np.median(crops[:, :3, :]))
    rate = model.unwrap_python_model().estimator.ood.false_alarm_rate
    out = {
        "false_alarm_rate": rate,
        "test_flag_rate": round(float(inside["ood"].mean()), 4),
        "n_test": int(len(inside)),
    }
    for name, probe in probe_sets(size, background, rng).items():
        answer = model.predict(probe.astype(np.float32))
        scores = answer["ood_score"].to_numpy()
        labels = np.r_[np.zeros(len(inside)), np.ones(len(scores))]
        auroc = roc_auc_score(labels, np.r_[inside["ood_score"].to_numpy(), scores])
        out[f"auroc_{name}"] = round(float(auroc), 4)
        out[f"flagged_{name}"] = round(float(answer["ood"].mean()), 4)
    if SAMPLES.is_dir():
        real = [grey(p) for p in sorted(SAMPLES.glob("*.png"))]
        flags = model.unwrap_python_model().predict(None, real)["ood"]
        out["real_crops_flagged"] = f"{int(flags.sum())}/{len(flags)}"
    return out


def analyse(uri: str, run_id: str, seed: int) -> dict:
    """Every figure of one run."""
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    cells, fractions = run_tables(client, run_id)
    mlflow.set_tracking_uri(uri)
    estimator = saved_estimator(run)
    return {
        "seed": seed,
        "run_id": run_id,
        "shipped": shipped(run, fractions),
        "methods": method_grid(cells, estimator),
        "intervals": interval_grid(cells, estimator),
        "oracle": oracle_grid(run, seed),
        "ood": ood_figures(run, cells, np.random.default_rng(seed)),
    }


def summarise(results: list[dict]) -> dict:
    """Mean and worst over seeds of the shipped figures; mean MAE of each method."""
    shipped_keys = results[0]["shipped"].keys()
    summary = {
        k: {
            "mean": round(float(np.mean([r["shipped"][k] for r in results])), 4),
            "worst": round(float(max(r["shipped"][k] for r in results)), 4)
            if k not in ("coverage", "test/f1_macro", "test/acc")
            else round(float(min(r["shipped"][k] for r in results)), 4),
        }
        for k in shipped_keys
    }
    methods = [m for m in results[0]["methods"] if not m.startswith("ece_")]
    summary["ece_by_calibration_mean"] = {
        m: round(float(np.mean([r["methods"][m] for r in results])), 4)
        for m in results[0]["methods"]
        if m.startswith("ece_")
    }
    summary["methods_mean_mae"] = {
        m: round(float(np.mean([r["methods"][m]["mae"] for r in results])), 4) for m in methods
    }
    summary["methods_mean_max_err"] = {
        m: round(float(np.mean([r["methods"][m]["max_err"] for r in results])), 4) for m in methods
    }
    summary["intervals_mean"] = {
        pair: {
            k: round(float(np.mean([r["intervals"][pair][k] for r in results])), 4)
            for k in ("mae", "coverage", "half_width_mean")
        }
        for pair in INTERVAL_CANDIDATES
    }
    summary["oracle_mean"] = {
        cal: {
            k: round(float(np.mean([r["oracle"][cal][k] for r in results])), 4)
            for k in results[0]["oracle"][cal]
        }
        for cal in results[0].get("oracle", {})
    }
    ood_keys = [k for k in results[0]["ood"] if k.startswith(("auroc_", "test_flag"))]
    summary["ood_worst"] = {
        k: round(float((max if k == "test_flag_rate" else min)(r["ood"][k] for r in results)), 4)
        for k in ood_keys
    }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--reuse", default=None, help="analyse the runs already in this store")
    parser.add_argument(
        "--overrides", default="", help="Hydra overrides for every run, e.g. trainer.max_epochs=40"
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/fate_estimates.json"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="fate-estimates-"))
    uri = args.reuse or f"sqlite:///{tmp}/mlflow.db"
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    results = []
    for seed in seeds:
        if args.reuse:
            run_id = seed_run(uri, seed).info.run_id
        else:
            run_id = train(seed, uri, tmp, args.overrides.split())
        results.append(analyse(uri, run_id, seed))
        print(json.dumps(results[-1]["shipped"] | results[-1]["ood"]), flush=True)
        report = {  # after every seed: an interrupted invocation keeps its runs
            "command": "python benchmarks/fate_estimates.py --seeds "
            + args.seeds
            + (f" --overrides '{args.overrides}'" if args.overrides else ""),
            "summary": summarise(results),
            "runs": results,
        }
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["summary"], indent=1))
    print(f"-> {args.out} (runs in {uri})")


if __name__ == "__main__":
    main()
