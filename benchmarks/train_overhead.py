"""What ``nscfate-train`` costs on top of the training itself (issue 13).

    python benchmarks/train_overhead.py [--repeats 3] [--epochs 5] [--label after]
                                        [--checkout PATH] [--out benchmarks/results/train_overhead.json]

A is the real ``nscfate-train experiment=cpu_baseline trainer.max_epochs=5`` process (small_cnn on the
demo's synthetic data, tracking to a SQLite store in a temporary folder: evaluation of the test
split and the four inducer conditions, oracle, plots, pyfunc model, everything a run records). B is a
bare PyTorch loop in a process of its own (``--bare``): the same datamodule and loaders (built from
the same composed config, batch size from the same recipe), model, AdamW and cosine schedule, the
same epochs of training and validation, nothing else. A and B run alternately, ``--repeats`` times
each, after one untimed run that generates the synthetic store. The runs of A share one tracking
database, created before timing, as a lab's runs share ``mlruns/mlflow.db`` (``--fresh-store``: each
creates its own, which adds the schema's creation, about a second). Reported (medians over the
repeats): whole-process wall time of each and their ratio; per-epoch time (epochs 2.., from the
timestamps of the per-epoch ``val/f1_macro`` in MLflow for A, timed in the loop for B) and its
ratio. ``--checkout`` measures another checkout of nscfate (e.g. a ``git worktree`` of an older
commit) with this script; ``--label`` names the record entry (``before``, ``after``).
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
#: The run issue 13 measured; the bare loop composes the same config.
OVERRIDES = ["experiment=cpu_baseline"]


def env_for(checkout: Path | None) -> dict[str, str]:
    """The environment of a measured process: quiet, and nscfate imported from ``checkout``."""
    env = os.environ | {"PYTHONWARNINGS": "ignore", "NO_ALBUMENTATIONS_UPDATE": "1"}
    if checkout is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(checkout), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
    return env


def run_nscfate(tmp: Path, data_dir: Path, epochs: int, tag: str, env: dict, uri: str) -> dict:
    """A: one ``nscfate-train`` process; its wall time and epoch durations from MLflow."""
    from mlflow import MlflowClient

    cmd = [
        sys.executable,
        "-m",
        "nscfate.cli.train",
        *OVERRIDES,
        f"trainer.max_epochs={epochs}",
        f"paths.data_dir={data_dir}",
        f"tracking.uri={uri}",
        f"hydra.run.dir={tmp}/run-{tag}",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"nscfate-train failed:\n{proc.stderr[-3000:]}")
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("nscfate").experiment_id])[0]
    history = client.get_metric_history(run.info.run_id, "val/f1_macro")
    stamps = sorted(m.timestamp / 1000 for m in history)
    artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id))
    return {
        "wall_seconds": round(wall, 2),
        "epoch_seconds": [round(b - a, 2) for a, b in zip(stamps, stamps[1:], strict=False)],
        "test_f1_macro": round(run.data.metrics["test/f1_macro"], 4),
        "n_metrics": len(run.data.metrics),
        "artifacts": artifacts,
        "model_uri": run.data.tags.get("nscfate.model_uri"),
    }


def run_bare(tmp: Path, data_dir: Path, epochs: int, tag: str, env: dict) -> dict:
    """B: one bare-loop process (this script with ``--bare``); its wall time and epoch durations."""
    out = tmp / f"bare-{tag}.json"
    cmd = [sys.executable, str(HERE), "--bare", "--epochs", str(epochs)]
    cmd += ["--data-dir", str(data_dir), "--bare-out", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bare loop failed:\n{proc.stderr[-3000:]}")
    return {"wall_seconds": round(wall, 2)} | json.loads(out.read_text())


def bare_loop(epochs: int, data_dir: Path) -> dict:
    """The bare PyTorch loop: the same datamodule, model, optimizer, schedule and epochs."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from nscfate.paths import CONF_DIR
    from nscfate.training.recipe import fit_to_data

    overrides = [*OVERRIDES, f"trainer.max_epochs={epochs}", f"paths.data_dir={data_dir}"]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    cfg, _ = fit_to_data(
        cfg, n_train=len(datamodule.datasets["train"]), n_val=len(datamodule.datasets["val"])
    )
    datamodule.batch_size = cfg.data.batch_size
    torch.manual_seed(cfg.seed)
    net = instantiate(cfg.model)
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())
    scheduler = instantiate(cfg.scheduler.scheduler)(optimizer)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.loss.label_smoothing)
    train, val = datamodule.train_dataloader(), datamodule.val_dataloader()
    stamps, accuracy = [], []
    for _ in range(epochs):
        net.train()
        for batch in train:
            optimizer.zero_grad(set_to_none=True)
            criterion(net(batch["image"]), batch["label"]).backward()
            optimizer.step()
        scheduler.step()
        net.eval()
        hits = seen = 0
        with torch.inference_mode():
            for batch in val:
                hits += int((net(batch["image"]).argmax(1) == batch["label"]).sum())
                seen += len(batch["label"])
        accuracy.append(hits / seen)
        stamps.append(time.perf_counter())
    return {
        "epoch_seconds": [round(b - a, 2) for a, b in zip(stamps, stamps[1:], strict=False)],
        "val_acc": round(accuracy[-1], 4),
        "batch_size": int(cfg.data.batch_size),
    }


def summarise(a_runs: list[dict], b_runs: list[dict]) -> dict:
    """Medians and ratios (A over B) of whole-process and per-epoch time."""
    med = statistics.median
    a_wall, b_wall = med(r["wall_seconds"] for r in a_runs), med(r["wall_seconds"] for r in b_runs)
    a_epoch = med(s for r in a_runs for s in r["epoch_seconds"])
    b_epoch = med(s for r in b_runs for s in r["epoch_seconds"])
    return {
        "nscfate_train_wall_median": round(a_wall, 2),
        "bare_loop_wall_median": round(b_wall, 2),
        "whole_process_ratio": round(a_wall / b_wall, 3),
        "fixed_seconds": round(a_wall - b_wall, 2),
        "nscfate_train_epoch_median": round(a_epoch, 2),
        "bare_loop_epoch_median": round(b_epoch, 2),
        "per_epoch_ratio": round(a_epoch / b_epoch, 3),
        # the same ratios pair by pair (A_i / B_i): how much the noise moves them
        "whole_process_ratio_pairs": [
            round(a["wall_seconds"] / b["wall_seconds"], 3)
            for a, b in zip(a_runs, b_runs, strict=True)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--label", default="after")
    parser.add_argument("--checkout", type=Path, default=None, help="another nscfate checkout")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="synthetic data (default: temp)"
    )
    parser.add_argument("--out", type=Path, default=HERE.parent / "results/train_overhead.json")
    parser.add_argument(
        "--fresh-store",
        action="store_true",
        help="each nscfate-train run creates its own tracking database (a lab's very first run); "
        "by default they share one, created before timing, as a lab's runs share mlruns/mlflow.db",
    )
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        args.bare_out.write_text(json.dumps(bare_loop(args.epochs, args.data_dir)))
        return
    env = env_for(args.checkout.resolve() if args.checkout else None)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir = args.data_dir or tmp / "data"
        run_bare(tmp, data_dir, 1, "warmup", env)  # generates the synthetic store, untimed
        shared = f"sqlite:///{tmp}/mlflow.db"
        if not args.fresh_store:
            from mlflow import MlflowClient

            MlflowClient(shared).search_experiments()  # creates the database's tables, untimed
        a_runs, b_runs = [], []
        for i in range(args.repeats):  # alternately, so that the machine's noise hits both
            uri = f"sqlite:///{tmp}/mlflow-{i}.db" if args.fresh_store else shared
            a_runs.append(run_nscfate(tmp, data_dir, args.epochs, str(i), env, uri))
            b_runs.append(run_bare(tmp, data_dir, args.epochs, str(i), env))
            print(
                f"repeat {i}: nscfate-train {a_runs[-1]['wall_seconds']} s, bare {b_runs[-1]['wall_seconds']} s",
                flush=True,
            )
    summary = summarise(a_runs, b_runs)
    record = json.loads(args.out.read_text()) if args.out.exists() else {}
    record[args.label] = {
        "command": " ".join(
            ["python benchmarks/train_overhead.py", f"--repeats {args.repeats}"]
            + [f"--epochs {args.epochs}", f"--label {args.label}"]
            + ([f"--checkout {args.checkout}"] if args.checkout else [])
            + (["--fresh-store"] if args.fresh_store else [])
        ),
        "nscfate_train": " ".join(
            ["nscfate-train", *OVERRIDES, f"trainer.max_epochs={args.epochs}"]
        ),
        "load_average_at_end": os.getloadavg()[0],
        "summary": summary,
        "nscfate_train_runs": a_runs,
        "bare_loop_runs": b_runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
