"""``search.workers=N``: one command runs N local workers on one study.

Each started worker is the same ``nscfate-train -m`` command line with ``search.workers=1`` and its
own sweep folder, a separate process (its own interpreter, its own CUDA context). The command starts
all N and waits for them. When GPUs are visible each worker sees one of them
(``CUDA_VISIBLE_DEVICES``, round-robin). The workers share the study through its storage and its
lock exactly as workers started by hand do, so together they finish ``search.n_trials``; a worker
that dies has its trial re-run by the others.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from nscfate.errors import NscfateError
from nscfate.files import atomic_write

log = logging.getLogger(__name__)
#: Overrides a worker's command line sets itself (dropped from the parent's).
_OWN = ("search.workers=", "search.backend=", "hydra.sweep.dir=", "+search.workers=")


BACKENDS = ("local", "slurm")


def check_workers(workers: object, storage: str, backend: str = "local") -> None:
    """NscfateError unless ``workers`` is a whole number >= 1 and, for several, ``storage`` has
    the lock workers share (see ``nscfate.search.storage.has_lock``)."""
    from nscfate.search.storage import has_lock

    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise NscfateError(f"search.workers={workers}: expected a whole number of processes >= 1")
    if backend not in BACKENDS:
        raise NscfateError(f"search.backend={backend}: expected one of {', '.join(BACKENDS)}")
    if workers > 1 and not has_lock(storage):
        raise NscfateError(
            f"search.workers={workers}: search.storage={storage} has no lock shared by workers; "
            "use sqlite:///, journal:/// or postgresql://"
        )


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (empty without CUDA)."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g for g in given.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def worker_command(argv: list[str], sweep_dir: Path, index: int) -> list[str]:
    """Worker ``index``'s command line: the parent's overrides (``argv`` without the program), as
    one worker, writing under ``<sweep_dir>/worker-<index>``."""
    kept = [a for a in argv if not a.startswith(_OWN)]
    return [
        sys.executable,
        "-m",
        "nscfate.cli.train",
        *kept,
        "search.workers=1",
        "search.backend=local",  # a worker runs trials itself, it never starts workers
        f"hydra.sweep.dir={sweep_dir / f'worker-{index}'}",
    ]


def worker_env(index: int, gpus: list[str]) -> dict[str, str]:
    """Worker ``index``'s environment: this one, with one GPU visible when there are GPUs."""
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    env["NSCFATE_WORKER"] = str(index)
    return env


def run_workers(n: int, sweep_dir: Path, argv: list[str] | None = None) -> list[str]:
    """Start ``n`` local workers and wait for all; the ones that failed (empty if none).
    Interrupting the parent stops the workers (a later run recovers their trials)."""
    argv = sys.argv[1:] if argv is None else argv
    gpus = visible_gpus()
    procs: dict[int, subprocess.Popen] = {}
    try:
        for i in range(n):
            procs[i] = subprocess.Popen(worker_command(argv, sweep_dir, i), env=worker_env(i, gpus))
            log.info(
                "worker %d: pid %d%s",
                i,
                procs[i].pid,
                f", CUDA_VISIBLE_DEVICES={gpus[i % len(gpus)]}" if gpus else "",
            )
        for proc in procs.values():
            proc.wait()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    return failed_workers(procs)


def failed_workers(procs: dict[int, subprocess.Popen]) -> list[str]:
    """The workers of :func:`run_workers` that exited with an error, e.g. ``worker 1 (exit 2)``."""
    return [f"worker {i} (exit {p.returncode})" for i, p in procs.items() if p.returncode != 0]


def slurm_script(
    n: int, sweep_dir: Path, argv: list[str], job_name: str, options: list[str]
) -> str:
    """A SLURM job array of ``n`` workers: task ``i`` runs worker ``i``'s command line (SLURM
    itself sets CUDA_VISIBLE_DEVICES for a task given ``--gres=gpu:1`` in ``options``)."""
    cmd = worker_command(argv, sweep_dir, 0)
    cmd[-1] = f"hydra.sweep.dir={sweep_dir}/worker-$SLURM_ARRAY_TASK_ID"
    line = " ".join(shlex.quote(c) for c in cmd[:-1]) + f' "{cmd[-1]}"'
    head = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --array=0-{n - 1}",
        f"#SBATCH --output={sweep_dir}/worker-%a.log",
        *(f"#SBATCH {o}" for o in options),
    ]
    return "\n".join([*head, "export NSCFATE_WORKER=$SLURM_ARRAY_TASK_ID", f"exec {line}", ""])


def run_slurm_workers(
    n: int, sweep_dir: Path, job_name: str, options: list[str], argv: list[str] | None = None
) -> list[str]:
    """Submit ``n`` workers as one SLURM job array (``sbatch --wait``) and wait for it; the
    failures (empty if none). Interrupting the parent cancels the job (``scancel``)."""
    if shutil.which("sbatch") is None:
        raise NscfateError(
            "search.backend=slurm: sbatch is not on PATH (is this a SLURM login node?)"
        )
    argv = sys.argv[1:] if argv is None else argv
    script = sweep_dir / "workers.sbatch"
    with atomic_write(script) as tmp:
        tmp.write_text(slurm_script(n, sweep_dir, argv, job_name, options))
    proc = subprocess.Popen(
        ["sbatch", "--parsable", "--wait", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    job = proc.stdout.readline().strip().split(";")[0]
    log.info("SLURM job array %s: %d workers, logs %s/worker-<i>.log", job, n, sweep_dir)
    try:
        _, err = proc.communicate()
    except BaseException:
        if job:
            subprocess.run(["scancel", job], check=False)
        proc.kill()
        raise
    if not job:
        raise NscfateError(f"search.backend=slurm: sbatch refused the job: {err.strip()[:300]}")
    return [] if proc.returncode == 0 else [f"SLURM job {job} (exit {proc.returncode})"]
