"""What median pruning saves: the same 12-trial sweep over model and learning rate, with and without.

    python benchmarks/sweep_pruning.py [--trials 12] [--epochs 12] [--batch-size 32] [--startup 3] [--warmup 0]

Runs two real ``nscfate-train -m`` sweeps on the default synthetic data (same sampler seed, separate
storages and MLflow stores under a temporary folder), then prints the epochs each trained, the saving,
and both best objectives. Early stopping is off in both so that only the pruner ends trials early.
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

import optuna
import yaml

KEPT = ("epochs_trained", "trials", "wall_seconds", "best", "per_trial")
SPACE = [
    "model=choice(small_cnn,mobilenetv3_small_100,resnet18)",
    "optimizer.lr=tag(log,interval(1e-5,3e-2))",
]


def sweep(tmp: Path, pruner: str, args: argparse.Namespace) -> dict:
    """Run one sweep and return its summary (plus wall time)."""
    trials, epochs = args.trials, args.epochs
    cmd = [
        sys.executable,
        "-m",
        "nscfate.cli.train",
        "-m",
        "search=default",
        *SPACE,
        f"data.batch_size={args.batch_size}",
        f"search.n_startup_trials={args.startup}",
        f"search.n_warmup_steps={args.warmup}",
        f"search.pruner={pruner}",
        f"search.n_trials={trials}",
        f"search.study=bench-{pruner}",
        f"search.storage=sqlite:///{tmp}/optuna-{pruner}.db",
        f"tracking.uri=sqlite:///{tmp}/mlflow-{pruner}.db",
        f"tracking.experiment=bench-{pruner}",
        f"hydra.sweep.dir={tmp}/sweep-{pruner}",
        f"trainer.max_epochs={epochs}",
        "~callbacks.early_stopping",
        "~callbacks.rich_progress_bar",
        "trainer.enable_progress_bar=false",
        f"paths.data_dir={tmp}/data",
    ]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"sweep with pruner={pruner} failed:\n{proc.stderr[-3000:]}")
    summary = yaml.safe_load((tmp / f"sweep-{pruner}" / "sweep_summary.yaml").read_text())
    summary["wall_seconds"] = round(time.time() - start, 1)
    summary["per_trial"] = per_trial(f"bench-{pruner}", f"sqlite:///{tmp}/optuna-{pruner}.db")
    return summary


def per_trial(study: str, storage: str) -> list[dict]:
    """Each trial's parameters, final state, epochs trained and objective, read back from the storage."""
    trials = optuna.load_study(study_name=study, storage=storage).trials
    return [
        {
            "number": t.number,
            "params": t.params,
            "state": t.state.name,
            "epochs": t.user_attrs.get("epochs"),
            "value": None if t.value is None else round(t.value, 4),
        }
        for t in trials
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--epochs", type=int, default=12, help="the trainer's default max_epochs")
    p.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="32 gives ~26 steps per epoch on the default data",
    )
    p.add_argument(
        "--startup", type=int, default=3, help="trials before the median pruner may prune"
    )
    p.add_argument(
        "--warmup", type=int, default=0, help="epochs every trial gets before it can be pruned"
    )
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        median = sweep(tmp, "median", args)
        none = sweep(tmp, "none", args)
    saving = 1 - median["epochs_trained"] / none["epochs_trained"]
    gap = none["best"]["value"] - median["best"]["value"]
    result = {
        "trials": args.trials,
        "max_epochs": args.epochs,
        "batch_size": args.batch_size,
        "n_startup_trials": args.startup,
        "n_warmup_steps": args.warmup,
        "space": SPACE,
        "median": {k: median[k] for k in KEPT},
        "none": {k: none[k] for k in KEPT},
        "epoch_saving": round(saving, 3),
        "best_gap": round(gap, 4),
    }
    for name, run in (("median", median), ("none", none)):
        print(f"pruner={name}:")
        for t in run["per_trial"]:
            params = ", ".join(
                f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}"
                for k, v in t["params"].items()
            )
            print(
                f"  trial {t['number']:2d} {t['state']:8s} {t['epochs']!s:>3} epochs  value {t['value']}  {params}"
            )
    print(
        f"epochs trained: median pruner {median['epochs_trained']}, no pruner {none['epochs_trained']} "
        f"-> {saving:.0%} fewer (goal >= 40%)"
    )
    print(
        f"best val/f1_macro_best: median {median['best']['value']:.4f}, none {none['best']['value']:.4f} "
        f"-> gap {gap:+.4f} (goal within 0.02)"
    )
    print(f"wall time: median {median['wall_seconds']} s, none {none['wall_seconds']} s")
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"sweep_pruning_epochs{args.epochs}_batch{args.batch_size}_startup{args.startup}_warmup{args.warmup}"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
