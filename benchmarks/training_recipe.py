"""Does the default recipe learn on lab-sized data as well as on the synthetic default?

    python benchmarks/training_recipe.py [--stores lab1,lab2,default,demo] [--variants before,after]
                                         [--repeats 1] [--out benchmarks/results/training_recipe.json]

Stores: ``lab1``/``lab2`` are IDEAS-style exports of 999 synthetic cells (days 1/3/7, four cultures per
class and day, 60 px wide BMPs 37-57 px high; export seeds 1 and 2) ingested with ``--format ideas``;
``default`` is the built-in synthetic data (``nscfate-train`` with no data override); ``demo`` is
``experiment=cpu_baseline`` (``make demo``). Variants: ``before`` is the fixed batch size and epochs
nscfate had before the recipe (128 and 12; 20 for the demo), ``after`` the shipped defaults
(``auto``); ``steps=N`` / ``batches=N`` try other ``recipe.min_steps`` /
``recipe.min_batches_per_epoch``; any other ``key=value`` (several joined with ``&``) is passed to
Hydra as given, e.g. ``+callbacks.ema._target_=lightning.pytorch.callbacks.EMAWeightAveraging``.
``--seeds 0,1,2`` repeats every pair with those training seeds (``seed=``).
Every (store, variant) pair is a real ``nscfate-train`` process, run alternately in one invocation;
the script prints test macro-F1, accuracy by day, batch size, epochs and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

from nscfate.data.export import synthetic_ideas_export
from nscfate.data.ingest import ingest

LAB_SEEDS = {"lab1": 1, "lab2": 2}
#: What a run records of its fate-fraction estimates and calibration, where it has them.
FRACTION_FIGURES = (
    "indep/frac_mae_raw",
    "indep/frac_mae",
    "indep/frac_max_err",
    "test/ece",
    "test/ece_uncalibrated",
    "test/ood_frac",
    "oracle/frac_mae",
)


#: Batch size and epochs before the recipe existed (cpu_baseline fixed 20 epochs for the demo).
BEFORE = {"demo": ["data.batch_size=128", "trainer.max_epochs=20"]}


def variant_overrides(name: str, store: str) -> list[str]:
    """Hydra overrides of one recipe variant."""
    if name == "before":
        return BEFORE.get(store, ["data.batch_size=128", "trainer.max_epochs=12"])
    if name == "after":
        return []
    key, _, value = name.partition("=")
    setting = {"steps": "recipe.min_steps", "batches": "recipe.min_batches_per_epoch"}.get(key)
    return [f"{setting}={value}"] if setting else name.split("&")


def store_overrides(name: str, tmp: Path) -> list[str]:
    """Hydra overrides that select one store (building a lab export on first use)."""
    if name == "default":
        return [f"paths.data_dir={tmp}/data"]
    if name == "demo":
        return ["experiment=cpu_baseline", f"paths.data_dir={tmp}/data"]
    store = tmp / f"store-{name}"
    if not store.exists():
        synthetic_ideas_export(tmp / f"export-{name}", seed=LAB_SEEDS[name])
        ingest(tmp / f"export-{name}", store, fmt="ideas")
    return ["data=folder", f"data.path={store}"]


def _train_cells(log: str) -> int | None:
    """The training-set size nscfate-train reports with its batch-size recipe."""
    found = re.search(r"(\d+) training cells", log)
    return int(found.group(1)) if found else None


def run(store: str, variant: str, tmp: Path, tag: str, seed: int | None = None) -> dict:
    """One nscfate-train process; returns its figures from MLflow."""
    uri = f"sqlite:///{tmp}/mlflow.db"
    cmd = [
        sys.executable,
        "-m",
        "nscfate.cli.train",
        *store_overrides(store, tmp),
        *variant_overrides(variant, store),
        *([f"seed={seed}"] if seed is not None else []),
        f"tracking.uri={uri}",
        f"tracking.experiment=recipe-{tag}",
        f"hydra.run.dir={tmp}/run-{tag}",
        "~callbacks.rich_progress_bar",
        "trainer.enable_progress_bar=false",
    ]
    start = time.time()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=os.environ | {"PYTHONWARNINGS": "ignore"}
    )
    wall = time.time() - start
    if proc.returncode != 0:
        sys.exit(f"{store}/{variant} failed:\n{proc.stderr[-3000:]}")
    client = MlflowClient(uri)
    run_ = client.search_runs([client.get_experiment_by_name(f"recipe-{tag}").experiment_id])[0]
    m, p = run_.data.metrics, run_.data.params
    epochs = len(client.get_metric_history(run_.info.run_id, "val/f1_macro"))
    return {
        "store": store,
        "variant": variant,
        "seed": int(p.get("seed", 0)),
        "test_f1_macro": round(m["test/f1_macro"], 4),
        "test_acc": round(m["test/acc"], 4),
        "acc_by_day": {
            k.removeprefix("test/acc_"): round(v, 3)
            for k, v in sorted(m.items())
            if k.startswith("test/acc_day")
        },
        "oracle_by_day": {
            k.removeprefix("oracle/acc_"): round(v, 3)
            for k, v in sorted(m.items())
            if k.startswith("oracle/acc_day")
        },
        # fate fractions of the held-out inducer conditions and calibration (issue 11's targets)
        **{name.replace("/", "_"): round(m[name], 4) for name in FRACTION_FIGURES if name in m},
        "cells_per_group": p.get("data.synthetic.cells_per_group"),
        "train_cells": _train_cells(proc.stdout + proc.stderr),
        "batch_size": int(p["data.batch_size"]),
        "max_epochs": int(p["trainer.max_epochs"]),
        "epochs_trained": epochs,
        "warnings": run_.data.tags.get("nscfate.warnings", ""),
        "wall_seconds": round(wall, 1),
        "run_id": run_.info.run_id,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="lab1,lab2,default,demo")
    parser.add_argument("--variants", default="before,after")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--seeds", default=None, help="training seeds, e.g. 0,1,2 (default: config)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/training_recipe.json"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [None]
        pairs = [
            (repeat, seed, store, variant)
            for repeat in range(args.repeats)
            for seed in seeds
            for store in args.stores.split(",")
            for variant in args.variants.split(",")  # A and B alternate, store by store
        ]
        for repeat, seed, store, variant in pairs:
            tag = f"{store}-{len(results)}-{repeat}"
            results.append(run(store, variant, tmp, tag, seed))
            r = results[-1]
            print(
                f"{store:8s} {variant[:40]:40s} seed {r['seed']} macro-F1 {r['test_f1_macro']:.3f}  "
                f"by day {r['acc_by_day']}  frac_mae {r.get('indep_frac_mae', float('nan')):.3f} "
                f"max {r.get('indep_frac_max_err', float('nan')):.3f}  batch {r['batch_size']:3d}  "
                f"epochs {r['epochs_trained']:3d}/{r['max_epochs']:3d}  "
                f"{r['wall_seconds']:6.1f} s  {r['warnings']}",
                flush=True,
            )
            write(args.out, results)  # after every run: an interrupted invocation keeps its runs
    print(f"written {args.out}")


def write(out: Path, results: list[dict]) -> None:
    """The invocation's command and every finished run, as JSON."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(sys.argv), "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
