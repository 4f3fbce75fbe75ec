"""A sweep through a real SLURM cluster: tests/slurm/setup.sh installs Debian's slurm-wlm and
munge and runs a single-node cluster on this machine (root only; CI is root). The sweep is one
``nscfate-train -m ... search.workers=2 search.backend=slurm`` command, which submits its workers
as one job array on a PostgreSQL study; one array task is cancelled with ``scancel`` in the
middle of a trial, and the other must finish exactly ``n_trials``, every trial in MLflow."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from nscfate.search.storage import open_storage, standing_trials

from .conftest import REPO, TINY_DATA, console_script, wait_for_trials

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    """The single-node cluster, set up once (installing slurm-wlm and munge if missing)."""
    if os.geteuid() != 0:
        pytest.skip("setting up SLURM (tests/slurm/setup.sh) needs root; CI runs as root")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and there is no apt-get to install it")
    proc = subprocess.run(
        ["bash", str(REPO / "tests" / "slurm" / "setup.sh")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def _task_of(pid: int) -> str | None:
    """``<array job>_<task>`` of the SLURM array task a worker process runs in."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    env = dict(e.decode(errors="replace").split("=", 1) for e in environ if b"=" in e)
    if "SLURM_ARRAY_JOB_ID" not in env:
        return None
    return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"


def _cancel_a_task_mid_trial(study: str, storage: str, sweep: subprocess.Popen) -> list:
    """Wait until trials of two array tasks run at once and one of them is in its second
    epoch; cancel that task. Returns the trials as they were at that moment."""
    victim: list[str] = []

    def two_tasks_one_in_epoch_two(trials: list) -> bool:
        running = [t for t in trials if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
        tasks = {
            t.number: _task_of(int(t.user_attrs["worker"].rpartition(":")[2])) for t in running
        }
        victims = [t for t in running if t.user_attrs.get("epochs", 0) >= 2 and tasks[t.number]]
        if len({v for v in tasks.values() if v}) >= 2 and victims:
            victim.append(tasks[victims[0].number])
        return bool(victim)

    trials = wait_for_trials(
        study, storage, sweep, two_tasks_one_in_epoch_two, 400, "two array tasks running trials"
    )
    subprocess.run(["scancel", victim[0]], check=True)
    return trials


def test_a_sweep_as_a_slurm_job_array_survives_a_cancelled_task(
    slurm_cluster, tmp_path, data_dir, postgres_db
):
    storage, tracking = postgres_db(), postgres_db()
    study = f"slurm-{uuid.uuid4().hex[:6]}"
    cmd = [
        console_script("nscfate-train"),
        "-m",
        "search=default",
        "optimizer.lr=tag(log,interval(1e-3,1e-2))",
        "search.sampler=random",
        "search.pruner=none",
        "search.n_trials=4",
        "search.workers=2",
        "search.backend=slurm",
        "search.sbatch=['--cpus-per-task=1']",
        "search.heartbeat_interval=2",
        "search.grace_period=10",
        f"search.study={study}",
        f"search.storage={storage}",
        f"tracking.uri={tracking}",
        f"tracking.experiment={study}",
        f"paths.data_dir={data_dir}",
        f"hydra.sweep.dir={tmp_path}/sweep",
        "trainer.max_epochs=3",
        *TINY_DATA,
        "trainer.log_every_n_steps=1",
        "~callbacks.early_stopping",
    ]
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1")
    sweep = subprocess.Popen(
        cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        at_cancel = _cancel_a_task_mid_trial(study, storage, sweep)
        out, _ = sweep.communicate(timeout=480)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, out[-3000:]
    assert (tmp_path / "sweep" / "workers.sbatch").read_text().count("#SBATCH --array=0-1") == 1
    assert {p.name for p in (tmp_path / "sweep").glob("worker-*.log")} == {
        "worker-0.log",
        "worker-1.log",
    }
    assert len({t.user_attrs["worker"] for t in at_cancel if "worker" in t.user_attrs}) >= 2

    study_ = optuna.load_study(study_name=study, storage=open_storage(storage))
    standing = standing_trials(study_)
    assert len(standing) == 4 and all(t.state == TrialState.COMPLETE for t in standing)
    assert not [t for t in study_.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.params["optimizer.lr"] for t in standing}) == 4  # none twice
    retried = [t for t in study_.trials if "failed_trial" in t.system_attrs]
    assert len(retried) == 1  # the cancelled task's trial, re-run with its parameters
    dead = study_.trials[retried[0].system_attrs["failed_trial"]]
    assert dead.state == TrialState.FAIL and dead.params == retried[0].params
    client = MlflowClient(tracking)
    runs = {
        r.info.run_id: r
        for r in client.search_runs([client.get_experiment_by_name(study).experiment_id])
    }
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]
    for t in standing:
        run = runs[t.user_attrs["mlflow_run_id"]]
        assert run.info.status == "FINISHED" and "test/f1_macro" in run.data.metrics
        assert "nscfate.model_uri" in run.data.tags or run.data.tags["nscfate.model"] == (
            "on promotion"
        )
