"""What a sweep trial costs besides its training, and whether a sweep worker's memory grows (issue 13).

    python benchmarks/sweep_overhead.py [--trials 6] [--models small_cnn:300:2,nscnet:20:1]
                                        [--label after] [--checkout PATH]
                                        [--out benchmarks/results/sweep_overhead.json]

For each model, one real ``nscfate-train -m search=default`` worker runs a ``--trials``-trial sweep
over ``optimizer.lr`` (no pruning, so every trial trains its full epochs) on synthetic data with
``MODEL:CELLS_PER_GROUP:EPOCHS`` (``small_cnn:300:2`` is the demo's data, ``experiment=cpu_baseline``,
two epochs), tracking to SQLite and the study in another SQLite file, in a temporary folder. The worker
is this script (``--worker``), which times each trial (``OptunaSweeper._launch``: the Hydra job,
training, evaluation, everything the trial records) and the ``Trainer.fit`` inside it, and reads
its own resident memory from ``/proc/self/status`` after each trial (``VmRSS``; ``VmHWM`` is the
peak so far), and counts its live child processes (loader workers). Reported per trial: wall
seconds, fit seconds, fixed seconds (the difference), RSS and peak RSS in MB; per model: the median
fixed seconds and RSS after the last trial over RSS after trial 2. ``--checkout`` measures another
checkout of nscfate (e.g. a ``git worktree`` of an older commit); ``--label`` names the entry.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def child_processes() -> int:
    """Live child processes of this process (loader workers left running)."""
    me, n = str(os.getpid()), 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            n += stat.read_text().rsplit(")", 1)[1].split()[1] == me
        except (OSError, IndexError):
            continue
    return n


def prepare_data(argv: list[str]) -> None:
    """Generate the synthetic store before the first trial, so that no trial's time includes it."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from nscfate.paths import CONF_DIR

    keep = ("experiment=", "data.", "paths.")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[a for a in argv if a.startswith(keep)])
    instantiate(cfg.data).prepare_data()


def worker(log: Path, argv: list[str]) -> None:
    """Run ``nscfate-train`` in this process, timing every trial and its fit."""
    import lightning.pytorch as pl

    from nscfate.search import sweeper

    prepare_data(argv)
    fits: list[float] = []
    fit, launch = pl.Trainer.fit, sweeper.OptunaSweeper._launch

    def timed_fit(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fit(self, *args, **kwargs)
        finally:
            fits.append(time.perf_counter() - start)

    def timed_launch(self, trial, *args, **kwargs):
        fits.clear()
        start = time.perf_counter()
        outcome = launch(self, trial, *args, **kwargs)
        wall = time.perf_counter() - start
        line = {
            "trial": trial.number,
            "state": outcome.state.name,
            "wall_seconds": round(wall, 2),
            "fit_seconds": round(sum(fits), 2),
            "fixed_seconds": round(wall - sum(fits), 2),
            "rss_mb": status_mb("VmRSS"),
            "peak_rss_mb": status_mb("VmHWM"),
            "children": child_processes(),
        }
        with log.open("a") as f:
            f.write(json.dumps(line) + "\n")
        return outcome

    pl.Trainer.fit, sweeper.OptunaSweeper._launch = timed_fit, timed_launch
    sys.argv = ["nscfate-train", *argv]
    from nscfate.cli.train import main

    main()


def sweep(tmp: Path, model: str, cells: int, epochs: int, trials: int, env: dict) -> dict:
    """One worker's sweep; its per-trial lines and summary."""
    log = tmp / f"{model}.jsonl"
    args = [
        "-m",
        "search=default",
        "optimizer.lr=tag(log,interval(1e-4,1e-2))",
        f"search.n_trials={trials}",
        "search.pruner=none",
        f"search.study=overhead-{model}",
        f"search.storage=sqlite:///{tmp}/optuna-{model}.db",
        f"tracking.uri=sqlite:///{tmp}/mlflow-{model}.db",
        f"tracking.experiment=overhead-{model}",
        f"hydra.sweep.dir={tmp}/sweep-{model}",
        "experiment=cpu_baseline",
        f"model={model}",
        f"data.synthetic.cells_per_group={cells}",
        f"trainer.max_epochs={epochs}",
        f"paths.data_dir={tmp}/data",
        "~callbacks.rich_progress_bar",
        "trainer.enable_progress_bar=false",
    ]
    cmd = [sys.executable, str(HERE), "--worker", str(log), "--", *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"sweep of {model} failed:\n{proc.stderr[-3000:]}")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    rss = [line["rss_mb"] for line in lines]
    return {
        "model": model,
        "cells_per_group": cells,
        "epochs": epochs,
        "sweep_wall_seconds": round(wall, 1),
        "fixed_seconds_median": statistics.median(line["fixed_seconds"] for line in lines),
        "fit_seconds_median": statistics.median(line["fit_seconds"] for line in lines),
        "rss_last_over_trial2": round(rss[-1] / rss[1], 3) if len(rss) > 1 else None,
        "peak_rss_mb": max(line["peak_rss_mb"] for line in lines),
        "trials": lines,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--models", default="small_cnn:300:2,nscnet:20:1")
    parser.add_argument("--label", default="after")
    parser.add_argument("--checkout", type=Path, default=None, help="another nscfate checkout")
    parser.add_argument("--out", type=Path, default=HERE.parent / "results/sweep_overhead.json")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.worker:
        worker(args.worker, [a for a in rest if a != "--"])
        return
    env = os.environ | {"PYTHONWARNINGS": "ignore", "NO_ALBUMENTATIONS_UPDATE": "1"}
    if args.checkout:
        env["PYTHONPATH"] = str(args.checkout.resolve())
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models.split(","):
            model, cells, epochs = spec.split(":")
            result = sweep(Path(tmp), model, int(cells), int(epochs), args.trials, env)
            results.append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "trials"}), flush=True)
            for line in result["trials"]:
                print("  ", json.dumps(line), flush=True)
    record = json.loads(args.out.read_text()) if args.out.exists() else {}
    record[args.label] = {
        "command": " ".join(
            ["python benchmarks/sweep_overhead.py", f"--trials {args.trials}"]
            + [f"--models {args.models}", f"--label {args.label}"]
            + ([f"--checkout {args.checkout}"] if args.checkout else [])
        ),
        "load_average_at_end": os.getloadavg()[0],
        "models": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
