"""Two sweep workers against one (issue 15): the same 8-trial CPU sweep, ``search.workers=1`` (A)
and ``search.workers=2`` (B), alternated A, B, A, B, ... in one invocation.

    python benchmarks/sweep_workers.py [--pairs 2] [--trials 8] [--epochs 3] [--cells 40]
                                       [--out benchmarks/results/sweep_workers.json]

Each sweep is one real ``nscfate-train -m search=default`` command over ``optimizer.lr`` (random
sampler, no pruning, so every trial trains ``--epochs`` epochs) with ``model=small_cnn`` on synthetic
data (``--cells`` per group), one thread per process (``OMP_NUM_THREADS=1``), the study and MLflow in
fresh SQLite files of a temporary folder. The synthetic store is generated once before the first
sweep. Reported: each sweep's wall seconds (the whole command, worker start-up included), its CPU
seconds over all its processes and the cores that kept busy on average, trials finished, the workers
that ran them, and the speed-up of B over A (median of the pairs' ratios).

What two processes can gain on this machine at that moment is measured beside each pair: the same
one-thread training loop (small_cnn, batches of 32 crops of 64 x 64, forward, backward and an AdamW
step) alone and as two processes at once, alternated with the sweeps. Its ratio (twice the work in
the time of the slower of the two, against the time of one) is the ceiling of any two-worker
speed-up here: two vCPUs of a virtual machine are not two free cores when the host's other tenants
load the cores under them (``machine_pair_scaling`` in the record; ``--probe`` runs the loop once).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
BIN = Path(sys.executable).parent


def sweep_args(root: Path, name: str, trials: int, epochs: int, cells: int) -> list[str]:
    """The sweep's command line (without ``search.workers``)."""
    return [
        "-m",
        "search=default",
        "model=small_cnn",
        "optimizer.lr=tag(log,interval(1e-3,1e-2))",
        "search.sampler=random",
        "search.pruner=none",
        f"search.n_trials={trials}",
        f"search.study={name}",
        f"search.storage=sqlite:///{root}/{name}-optuna.db",
        f"tracking.uri=sqlite:///{root}/{name}-mlflow.db",
        f"tracking.experiment={name}",
        f"paths.data_dir={root}/data",
        f"hydra.sweep.dir={root}/{name}",
        f"trainer.max_epochs={epochs}",
        "~callbacks.early_stopping",
        f"data.synthetic.cells_per_group={cells}",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "data.batch_size=32",
        "quantify.n_boot=20",
    ]


def one_thread_env() -> dict[str, str]:
    """This environment with every math library held to one thread per process."""
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", PYTHONWARNINGS="ignore")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    return env


#: Optimizer steps of the probe loop (a few seconds on this machine).
PROBE_STEPS = 30


def probe() -> float:
    """Seconds for :data:`PROBE_STEPS` one-thread training steps of small_cnn (a worker's work)."""
    import torch

    from nscfate.models import create_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = create_model("small_cnn", num_classes=3, in_chans=1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, y = torch.randn(32, 1, 64, 64), torch.randint(0, 3, (32,))
    start = time.perf_counter()
    for _ in range(PROBE_STEPS):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return time.perf_counter() - start


def machine_pair_scaling() -> dict:
    """The probe alone, then two probes at once (separate processes): the throughput ratio."""
    cmd = [sys.executable, str(HERE), "--probe"]

    def seconds(procs: list[subprocess.Popen]) -> list[float]:
        return [float(p.communicate()[0].split()[-1]) for p in procs]

    env = one_thread_env()
    alone = seconds([subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)])[0]
    pair = seconds(
        [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in "ab"]
    )
    return {
        "alone_s": round(alone, 2),
        "pair_s": [round(s, 2) for s in pair],
        "scaling": round(2 * alone / max(pair), 3),
    }


def run_sweep(root: Path, name: str, workers: int, args: argparse.Namespace) -> dict:
    """Run one sweep to its end; its wall seconds and the study's finished trials by worker."""
    import optuna

    cmd = [
        str(BIN / "nscfate-train"),
        *sweep_args(root, name, args.trials, args.epochs, args.cells),
        f"search.workers={workers}",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=one_thread_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # every process of the sweep (worker 0 waits for the others): CPU seconds over wall seconds
    # is how many cores it kept busy, which bounds what a second worker can add on two cores
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{root}/{name}-optuna.db")
    done = [t for t in study.trials if t.state.is_finished()]
    by_worker: dict[str, int] = {}
    for t in done:
        who = str(t.user_attrs.get("worker"))
        by_worker[who] = by_worker.get(who, 0) + 1
    return {
        "name": name,
        "workers": workers,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),
        "cores_busy": round(cpu / seconds, 2),
        "finished_trials": len(done),
        "trials_by_worker": sorted(by_worker.values()),
    }


def main() -> None:
    """Alternate A (one worker) and B (two workers); print and record the speed-up."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--cells", type=int, default=40)
    p.add_argument("--out", default=str(HERE.parent / "results" / "sweep_workers.json"))
    p.add_argument("--probe", action="store_true", help="run the probe loop once, print seconds")
    args = p.parse_args()
    sys.path.insert(0, str(HERE.parents[1]))
    if args.probe:
        print(f"{probe():.3f}")
        return
    load_before = os.getloadavg()
    from nscfate.files import atomic_write

    sweeps, scaling = [], []
    with tempfile.TemporaryDirectory(prefix="sweep-workers-") as tmp:
        root = Path(tmp)
        run_sweep(root, "warmup", 1, argparse.Namespace(trials=1, epochs=1, cells=args.cells))
        for i in range(args.pairs):
            scaling.append(machine_pair_scaling())
            print(json.dumps({"machine_pair_scaling": scaling[-1]}), flush=True)
            for workers in (1, 2):
                sweeps.append(run_sweep(root, f"pair{i}-w{workers}", workers, args))
                print(json.dumps(sweeps[-1]), flush=True)
        scaling.append(machine_pair_scaling())
        print(json.dumps({"machine_pair_scaling": scaling[-1]}), flush=True)
    ratios = [a["seconds"] / b["seconds"] for a, b in zip(sweeps[::2], sweeps[1::2], strict=True)]
    record = {
        "what": "8-trial CPU sweep (small_cnn, one thread per process): search.workers=1 vs 2",
        "command": "python benchmarks/sweep_workers.py " + " ".join(sys.argv[1:]),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": load_before,
        },
        "sweeps": sweeps,
        "speedup_per_pair": [round(r, 3) for r in ratios],
        "speedup_median": round(statistics.median(ratios), 3),
        "target": 1.6,
        # before, between and after the pairs: what two processes gained on the machine then
        "machine_pair_scaling": scaling,
        "machine_pair_scaling_median": statistics.median(s["scaling"] for s in scaling),
    }
    with atomic_write(args.out) as out:
        out.write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"speed-up of 2 workers over 1: {record['speedup_median']} (pairs "
        f"{record['speedup_per_pair']}); two processes of the same training loop at once: "
        f"{record['machine_pair_scaling_median']}x one"
    )


if __name__ == "__main__":
    main()
