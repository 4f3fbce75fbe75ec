"""Optuna sweeps from the command line: resume, failures, pruning, MLflow nesting, workers, bad input.

Every sweep here is a real ``nscfate-train -m`` process against real storages (SQLite, journal file,
PostgreSQL) and a real SQLite MLflow store, on a tiny synthetic dataset.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from nscfate.search.storage import claim, open_storage, recover_dead_trials, standing_trials

from .conftest import TINY_DATA, console_script, run_cli

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.timeout(900)

TINY = [*TINY_DATA, "trainer.log_every_n_steps=1", "~callbacks.early_stopping"]
#: Short heartbeats, so a killed worker's trial is found stale within seconds.
FAST_HEARTBEAT = ["search.heartbeat_interval=2", "search.grace_period=6"]


def sweep_cmd(
    tmp: Path, data_dir: Path, study: str, storage: str, *args: str, epochs: int = 2
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "nscfate.cli.train",
        "-m",
        "search=default",
        f"search.study={study}",
        f"search.storage={storage}",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db",
        f"tracking.experiment={study}",
        f"paths.data_dir={data_dir}",
        f"hydra.sweep.dir={tmp}/sweep-{uuid.uuid4().hex[:6]}",
        f"trainer.max_epochs={epochs}",
        *TINY,
        *args,
    ]


def run(cmd: list[str], ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if ok and proc.returncode != 0:
        pytest.fail(f"sweep failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return proc


def run_in_process(cmd: list[str]) -> subprocess.CompletedProcess:
    """The same sweep as ``run(cmd, ok=False)``, in this process (no interpreter start-up)."""
    code, out, err = run_cli("train", *cmd[3:])  # cmd[:3] is python -m nscfate.cli.train
    return subprocess.CompletedProcess(cmd, code, out, err)


def runs_of(tmp: Path, experiment: str) -> list:
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


def test_sweep_resumes_to_the_total_and_mirrors_in_mlflow(tmp_path, data_dir):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    space = [
        "model=choice(small_cnn,mobilenetv3_small_100)",
        "optimizer.lr=tag(log,interval(1e-4,1e-2))",
    ]
    # the first sweep in this process, the resumed one as a real process (its terminal output)
    first = run_in_process(
        sweep_cmd(tmp_path, data_dir, "resume", storage, *space, "search.n_trials=1", epochs=1)
    )
    assert first.returncode == 0, first.stderr[-3000:]
    out = run(
        sweep_cmd(
            tmp_path,
            data_dir,
            "resume",
            storage,
            *space,
            "search.n_trials=2",
            "search.register_best=true",
            epochs=1,
        )
    )
    study = optuna.load_study(study_name="resume", storage=storage)
    assert len(study.trials) == 2 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert "best trial" in out.stdout and "optuna-dashboard" in out.stdout

    runs = runs_of(tmp_path, "resume")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(kids) == 2  # the resumed sweep found its parent again
    parent = parents[0]
    assert {k.data.tags["mlflow.parentRunId"] for k in kids} == {parent.info.run_id}
    by_run = {t.user_attrs["mlflow_run_id"]: t for t in study.trials}
    for kid in kids:
        trial = by_run[kid.info.run_id]
        assert kid.data.tags["nscfate.trial_number"] == str(trial.number)
        assert kid.data.params["trial.model"] == trial.params["model"]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert parent.data.tags["best.model"] == study.best_params["model"]
    arts = {
        a.path
        for a in MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").list_artifacts(
            parent.info.run_id, "plots"
        )
    }
    assert "plots/optimization_history.png" in arts
    summaries = list(tmp_path.glob("sweep-*/sweep_summary.yaml"))
    assert len(summaries) == 2
    # search.register_best=true: the best trial's model is now nscfate@challenger (not champion)
    model = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_registered_model("nscfate")
    assert {k: str(v) for k, v in model.aliases.items()} == {"challenger": "1"}
    assert "registered as nscfate v1" in out.stdout
    version = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_model_version("nscfate", "1")
    assert version.tags["nscfate.source_run"] == study.best_trial.user_attrs["mlflow_run_id"]
    listed = subprocess.run(
        [
            console_script("optuna"),
            "trials",
            "--study-name",
            "resume",
            "--storage",
            storage,
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        listed.returncode == 0 and len(json.loads(listed.stdout)) == 2
    )  # Optuna's own CLI reads the study


@pytest.mark.slow
def test_killed_sweep_resumes_without_losing_or_duplicating_trials(tmp_path, data_dir):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    space = ["optimizer.lr=choice(0.001,0.002,0.003)", "search.sampler=grid", "search.pruner=none"]
    space += FAST_HEARTBEAT  # the killed worker's trial is stale within seconds
    cmd = sweep_cmd(tmp_path, data_dir, "killed", storage, *space, "search.n_trials=3", epochs=4)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until the second trial is running, then kill -9 the worker
        time.sleep(1)
        try:
            trials = optuna.load_study(study_name="killed", storage=storage).trials
        except KeyError:
            continue
        if any(t.number == 1 and t.state == TrialState.RUNNING for t in trials):
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run(cmd)
    study = optuna.load_study(study_name="killed", storage=storage)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["optimizer.lr"] for t in done) == [
        0.001,
        0.002,
        0.003,
    ]  # none lost, none twice
    dead = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(dead) == 1 and dead[0].number == 1  # failed once its heartbeat went stale
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == dead[0].number]
    assert (
        len(retry) == 1
        and retry[0].state == TrialState.COMPLETE
        and retry[0].params == dead[0].params
    )
    assert len(study.trials) == 4  # 3 counted + the killed one, replaced by its retry


def test_recovery_retries_a_trial_whose_worker_died_before_claiming_it(tmp_path):
    study = optuna.create_study(
        study_name="orphan", storage=open_storage(f"sqlite:///{tmp_path}/o.db")
    )
    space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    orphan = study.ask(space)  # its worker was killed between ask and claim
    live = study.ask(space)
    claim(live)  # claimed by this process, which is alive
    assert recover_dead_trials(study, locked=False) == []  # without a lock it may still be starting
    assert recover_dead_trials(study, locked=True) == [orphan.number]
    trials = study.trials
    assert trials[orphan.number].state == TrialState.FAIL
    assert "died" in trials[orphan.number].user_attrs["error"]
    assert trials[live.number].state == TrialState.RUNNING
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].params == orphan.params


def test_failing_trials_are_isolated_and_nan_is_a_failure(tmp_path, data_dir):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    # batch size 0 raises inside the trial; lr 1e12 sends the loss (the metric here) to NaN
    space = [
        "data.batch_size=choice(16,0)",
        "optimizer=sgd",
        "optimizer.lr=choice(0.01,1e12)",
        "search.sampler=grid",
        "search.pruner=none",
        "search.metric=val/loss",
        "search.direction=minimize",
        "search.max_failure_rate=1.0",
    ]
    proc = run_in_process(
        sweep_cmd(tmp_path, data_dir, "failing", storage, *space, "search.n_trials=4", epochs=1)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="failing", storage=storage)
    states = {(t.params["data.batch_size"], t.params["optimizer.lr"]): t for t in study.trials}
    assert states[(16, 0.01)].state == TrialState.COMPLETE
    assert (
        states[(0, 0.01)].state == TrialState.FAIL
        and "batch_size" in states[(0, 0.01)].user_attrs["error"]
    )
    assert (
        states[(16, 1e12)].state == TrialState.FAIL
        and "not a finite number" in states[(16, 1e12)].user_attrs["error"]
    )
    failed_runs = [r for r in runs_of(tmp_path, "failing") if r.info.status == "FAILED"]
    nan_run = states[(16, 1e12)].user_attrs["mlflow_run_id"]
    assert nan_run in {r.info.run_id for r in failed_runs}  # a run that trained and failed
    assert "mlflow_run_id" not in states[(0, 0.01)].user_attrs  # refused before any run opened


def test_sweep_stops_when_too_many_trials_fail(tmp_path, data_dir):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    proc = run_in_process(
        sweep_cmd(
            tmp_path,
            data_dir,
            "broken",
            storage,
            "data.batch_size=choice(0)",
            "optimizer.lr=choice(0.01,0.02)",
            "search.sampler=grid",
            "search.n_trials=2",
            "search.max_failure_rate=0.25",
        ),
    )
    assert proc.returncode == 1 and "max_failure_rate" in proc.stderr


@pytest.mark.slow
def test_pruning_stops_a_clearly_bad_region_early(tmp_path, data_dir):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    space = [
        "optimizer.lr=choice(0.003,1e-9)",
        "search.sampler=random",
        "search.n_startup_trials=2",
        "search.n_warmup_steps=1",
        "search.n_trials=6",
        "data.synthetic.cells_per_group=30",
    ]
    run(sweep_cmd(tmp_path, data_dir, "prune", storage, *space, epochs=6))
    study = optuna.load_study(study_name="prune", storage=storage)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.params["optimizer.lr"] == 1e-9 for t in pruned)
    assert all(t.user_attrs["epochs"] < 6 for t in pruned)
    killed = {r.info.run_id: r for r in runs_of(tmp_path, "prune") if r.info.status == "KILLED"}
    assert {t.user_attrs["mlflow_run_id"] for t in pruned} <= set(killed)
    assert all(r.data.tags.get("optuna.state") == "PRUNED" for r in killed.values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["optimizer.lrr=tag(log,interval(1e-4,1e-2))"], "Could not override 'optimizer.lrr'"),
        (["model=choice(small_cnn,no_such_net)"], "no_such_net"),
        # empty choices and reversed intervals: tests/test_space.py, in-process
        (["optimizer.lr=choice(0.1,0.2)", "search.metric=val/f2"], "not a metric nscfate logs"),
        (["optimizer.lr=choice(0.1,0.2)", "tracking=none"], "a sweep records every trial"),
    ],
)
def test_bad_sweeps_fail_before_any_trial(tmp_path, data_dir, args, message):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    proc = run_in_process(sweep_cmd(tmp_path, data_dir, "bad", storage, *args))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    if Path(f"{tmp_path}/optuna.db").exists():
        assert all(s.n_trials == 0 for s in optuna.get_all_study_summaries(storage))


def test_unreachable_storage_fails_before_any_trial(tmp_path, data_dir):
    storage = "postgresql+psycopg2://nobody@127.0.0.1:9/nowhere"
    proc = run_in_process(
        sweep_cmd(tmp_path, data_dir, "bad", storage, "optimizer.lr=choice(0.1,0.2)")
    )
    assert (
        proc.returncode == 1
        and "search.storage=postgresql+psycopg2://nobody@127.0.0.1:9/nowhere is unreachable"
        in proc.stderr
    )
    assert runs_of(tmp_path, "bad") == []


def _three_workers_one_killed(tmp: Path, data_dir: Path, study: str, storage: str) -> optuna.Study:
    """Three workers on a continuous TPE space (more points than n_trials); one is SIGKILLed in the
    middle of a trial; the two others must finish the study."""
    space = [
        "optimizer.lr=tag(log,interval(1e-4,1e-2))",
        "search.sampler=tpe",
        "search.pruner=none",
        "search.n_startup_trials=2",
        "search.n_trials=5",
        *FAST_HEARTBEAT,
    ]
    cmd = sweep_cmd(tmp, data_dir, study, storage, *space, epochs=3)
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    victim = _wait_for_a_trial_in_its_second_epoch(study, storage, {p.pid for p in procs})
    os.kill(victim, signal.SIGKILL)
    errors = {p.pid: p.communicate(timeout=900)[1] for p in procs}
    survivors = [p for p in procs if p.pid != victim]
    assert [p.returncode for p in survivors] == [0, 0], [errors[p.pid][-2000:] for p in survivors]
    return optuna.load_study(study_name=study, storage=open_storage(storage))


def _wait_for_a_trial_in_its_second_epoch(study: str, storage: str, pids: set[int]) -> int:
    deadline = time.time() + 600
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name=study, storage=open_storage(storage)).trials
        except KeyError:
            continue
        for t in trials:
            pid = int(str(t.user_attrs.get("worker", ":0")).rpartition(":")[2])
            if t.state == TrialState.RUNNING and t.user_attrs.get("epochs", 0) >= 2 and pid in pids:
                return pid
    pytest.fail("no trial reached its second epoch")


def _assert_exactly_n_trials(study: optuna.Study, tmp: Path, n: int) -> None:
    standing = standing_trials(study)
    assert len(standing) == n and all(t.state.is_finished() for t in standing)
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    values = [t.params["optimizer.lr"] for t in standing]
    assert len(set(values)) == n  # no point run twice
    assert len({t.user_attrs["worker"] for t in standing}) >= 2  # the survivors shared the work
    retried = {
        t.system_attrs["failed_trial"]: t for t in study.trials if "failed_trial" in t.system_attrs
    }
    dead = [t for t in study.trials if t.number in retried]
    assert len(dead) == 1 and dead[0].state == TrialState.FAIL  # the killed worker's trial ...
    assert retried[dead[0].number].params == dead[0].params  # ... re-run with its parameters
    runs = runs_of(tmp, study.study_name)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    dead_run = {r.info.run_id: r for r in runs}[dead[0].user_attrs["mlflow_run_id"]]
    assert dead_run.info.status in ("KILLED", "FAILED")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    by_run = {r.info.run_id: r for r in runs}
    for t in standing:  # every finished trial has its run, with metrics and a model: logged,
        # or (a trial that was not the best when it finished) built from its checkpoint on demand
        run_ = by_run[t.user_attrs["mlflow_run_id"]]
        assert run_.info.status == "FINISHED" and "test/f1_macro" in run_.data.metrics
        assert (
            "nscfate.model_uri" in run_.data.tags
            or run_.data.tags["nscfate.model"] == "on promotion"
        )
    best = by_run[study.best_trial.user_attrs["mlflow_run_id"]]
    assert "nscfate.model_uri" in best.data.tags  # the one a study promotes has its model logged


@pytest.mark.slow
def test_three_workers_on_a_journal_survive_a_killed_one(tmp_path, data_dir):
    storage = f"journal://{tmp_path}/optuna.log"
    study = _three_workers_one_killed(tmp_path, data_dir, "journal3", storage)
    _assert_exactly_n_trials(study, tmp_path, 5)


@pytest.mark.slow
@pytest.mark.postgres
def test_three_workers_on_postgres_survive_a_killed_one(tmp_path, data_dir, postgres_url):
    study = _three_workers_one_killed(tmp_path, data_dir, "pg3", postgres_url)
    _assert_exactly_n_trials(study, tmp_path, 5)


def test_a_worker_whose_trial_was_reaped_goes_on(tmp_path):
    """A live worker whose heartbeat stalled (a long pause) finds its trial failed and re-queued
    by another: its result is dropped, it does not crash, and the retry stands."""
    from nscfate.search.sweeper import OptunaSweeper
    from nscfate.search.trial import TrialOutcome

    storage = open_storage(f"sqlite:///{tmp_path}/o.db", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="reaped", storage=storage, direction="maximize")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
    claim(trial)
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)  # no beat for longer than the grace period
    assert recover_dead_trials(study, locked=True) == [trial.number]  # another worker reaps it
    OptunaSweeper._tell(study, trial, TrialOutcome(TrialState.COMPLETE, value=0.9), "val/acc")
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.WAITING]  # the retry is what counts


def test_a_grid_point_whose_worker_died_last_is_retried_not_lost(tmp_path):
    """The killed-sweep race, without the kill: a resumed grid sweep takes the last free point
    while the dead worker's trial still looks alive; when that trial is found dead, its retry
    waits in the queue. The grid has no free point left (a failed point counts as visited), but
    the retry must still be run, not the sweep ended one trial short."""
    from omegaconf import OmegaConf

    from nscfate.search.study import ExhaustibleGridSampler
    from nscfate.search.sweeper import OptunaSweeper

    storage = open_storage(f"sqlite:///{tmp_path}/o.db", heartbeat_interval=1, grace_period=1)
    grid = {"lr": [0.001, 0.002, 0.003]}
    space = {"lr": optuna.distributions.CategoricalDistribution(grid["lr"])}
    study = optuna.create_study(
        study_name="g", storage=storage, sampler=ExhaustibleGridSampler(grid, seed=0)
    )
    trials = [study.ask(space) for _ in range(3)]
    for t in trials:
        claim(t)
    dead, *alive = trials
    storage.record_heartbeat(dead._trial_id)  # its worker beat once, then was killed
    for t in alive:
        study.tell(t, 0.5)
    time.sleep(2.5)  # longer than the grace period: the dead worker's trial is stale
    assert recover_dead_trials(study, locked=True) == [dead.number]
    search = OmegaConf.create({"n_trials": 3})
    retry = OptunaSweeper._next_trial(study, SimpleNamespace(distributions=space), search)
    assert retry is not None and retry.params == dead.params


def test_a_worker_waits_only_for_trials_whose_death_it_would_see(tmp_path):
    from nscfate.search.storage import watchable_running_trials

    space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    journal = optuna.create_study(storage=open_storage(f"journal://{tmp_path}/o.log"))
    here, elsewhere = journal.ask(space), journal.ask(space)
    claim(here)
    elsewhere.set_user_attr("worker", "another-host:4242")  # a journal has no heartbeat to watch
    assert [t.number for t in watchable_running_trials(journal)] == [here.number]
    database = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/o.db"))
    remote = database.ask(space)
    remote.set_user_attr("worker", "another-host:4242")  # its heartbeat tells
    assert [t.number for t in watchable_running_trials(database)] == [remote.number]


def test_a_finished_worker_leaves_soon_after_the_last_trial_elsewhere_ends(tmp_path, monkeypatch):
    """With the total reached and a trial still running in another worker, a worker waits (that
    trial may die and be retried), but it looks again every second or so, not once per heartbeat
    interval: a 2-worker sweep used to end up to 10 s after its last trial."""
    from omegaconf import OmegaConf

    from nscfate.search import sweeper
    from nscfate.search.space import parse_space

    url = f"sqlite:///{tmp_path}/o.db"
    study = optuna.create_study(study_name="ending", storage=open_storage(url))
    space = parse_space(["x=interval(0,1)"])
    remote = study.ask(space.distributions)
    remote.set_user_attr("worker", "another-host:4242")  # alive: its heartbeat is fresh
    study._storage.record_heartbeat(remote._trial_id)
    search = OmegaConf.create(
        {"n_trials": 1, "storage": url, "heartbeat_interval": 10, "metric": "val/acc"}
    )
    naps: list[float] = []

    def nap(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 2:  # the other worker's trial ends during the second wait
            study.tell(remote, 0.5)

    monkeypatch.setattr(sweeper.time, "sleep", nap)
    sweeper.OptunaSweeper()._run_trials(study, space, search, "parent", client=None)
    assert len(naps) == 2 and max(naps) <= 1.0
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]


def test_the_command_starts_every_worker_and_trains_in_none(tmp_path, data_dir):
    """``search.workers=2`` without GPUs: the command starts two worker processes (0 and 1) and
    waits; together they finish exactly the study. (Training beside its own worker, the command
    trained 40 % slower per epoch than the worker did: benchmarks/sweep_workers.py, README.)"""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    cmd = sweep_cmd(
        tmp_path,
        data_dir,
        "cpu2",
        storage,
        "optimizer.lr=tag(log,interval(1e-3,1e-2))",
        "search.sampler=random",
        "search.pruner=none",
        "search.n_trials=4",
        "search.workers=2",
        epochs=1,
    )
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_cpu_only_env()
    )
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="cpu2", storage=open_storage(storage))
    standing = standing_trials(study)
    assert len(standing) == 4 and all(t.state == TrialState.COMPLETE for t in standing)
    pids = {int(t.user_attrs["worker"].rpartition(":")[2]) for t in standing}
    started = re.findall(r"worker (\d+): pid (\d+)", out + err)
    assert [int(i) for i, _ in started] == [0, 1]
    assert proc.pid not in pids and pids <= {int(pid) for _, pid in started}
    runs = runs_of(tmp_path, "cpu2")
    assert len(runs) == 5 and {r.info.status for r in runs} == {"FINISHED"}  # 4 trials + parent


def _cpu_only_env() -> dict[str, str]:
    return dict(os.environ, CUDA_VISIBLE_DEVICES="", NO_ALBUMENTATIONS_UPDATE="1")
