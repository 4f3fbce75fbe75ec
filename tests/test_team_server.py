"""The team tracking server for real: ``python -m nscfate.cli.tracking_server`` (what ``make
tracking-server`` runs) as its own process, on a PostgreSQL backend store with proxied artifacts in
a folder and MLflow's basic-auth app; training, a sweep, promotion and prediction all against its
``http://`` URI with the login only in MLFLOW_TRACKING_USERNAME/PASSWORD. Then the faults a lab
sees: the tracking server restarted, and the PostgreSQL server under it and under the study
restarted, each in the middle of a two-worker sweep that must still end with exactly
``n_trials``, none twice, nothing left RUNNING and every finished trial complete in MLflow.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import sqlalchemy
from mlflow import MlflowClient
from optuna.trial import TrialState

from nscfate.search.storage import open_storage, standing_trials

from .conftest import TINY_DATA, console_script, free_port, model_server, wait_for_trials

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(600)]
USER = "lab-admin"
SECRET = "PlantedTeamSecret-4711"
FAST_HEARTBEAT = ["search.heartbeat_interval=2", "search.grace_period=20"]


class TrackingServer:
    """One ``nscfate.cli.tracking_server`` process group, which can be stopped and started again
    on the same port, store and artifact folder."""

    def __init__(self, root: Path, backend: str) -> None:
        self.root, self.backend, self.port = root, backend, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = root / "server.log"

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "nscfate.cli.tracking_server",
            "--auth",
            f"--backend={self.backend}",
            f"--artifacts={self.root}/artifacts",
            f"--state-dir={self.root}/state",
            f"--port={self.port}",
        ]
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                cmd, env=client_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the tracking server exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        pytest.fail("the tracking server did not come up in 120 s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def client_env(**extra: str) -> dict[str, str]:
    """This environment with the login in MLflow's variables (and nowhere else)."""
    return dict(
        os.environ,
        MLFLOW_TRACKING_USERNAME=USER,
        MLFLOW_TRACKING_PASSWORD=SECRET,
        NO_ALBUMENTATIONS_UPDATE="1",
        **extra,
    )


@pytest.fixture
def server(tmp_path, postgres_db):
    srv = TrackingServer(tmp_path, postgres_db())
    srv.start()
    yield srv
    srv.stop()


def nscfate(script: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [console_script(script), *args], env=client_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def sweep_args(tmp: Path, data_dir: Path, server: TrackingServer, storage: str, *extra: str):
    study = f"team-{uuid.uuid4().hex[:6]}"
    return study, [
        "-m",
        "search=default",
        f"search.study={study}",
        f"search.storage={storage}",
        f"tracking.uri={server.url}",
        f"tracking.experiment={study}",
        f"paths.data_dir={data_dir}",
        f"hydra.sweep.dir={tmp}/{study}",
        *TINY_DATA,
        "trainer.log_every_n_steps=1",
        "~callbacks.early_stopping",
        *extra,
    ]


def test_train_sweep_promote_predict_on_the_team_server(server, tmp_path, data_dir, postgres_db):
    with pytest.raises(urllib.error.HTTPError) as refused:  # the auth app is on
        urllib.request.urlopen(f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1")
    assert refused.value.code == 401
    common = [f"tracking.uri={server.url}", f"paths.data_dir={data_dir}"]
    train = nscfate(
        "nscfate-train",
        *common,
        "tracking.experiment=team-train",
        *TINY_DATA,
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path}/run",
    )
    storage = postgres_db()
    study, args = sweep_args(
        tmp_path,
        data_dir,
        server,
        storage,
        "optimizer.lr=choice(0.003,0.01)",
        "search.sampler=grid",
        "search.n_trials=2",
        "trainer.max_epochs=2",
    )
    sweep = nscfate("nscfate-train", *args)
    promote = nscfate(
        "nscfate-promote",
        f"search.study={study}",
        f"search.storage={storage}",
        f"tracking.uri={server.url}",
        f"hydra.run.dir={tmp_path}/promote",
    )
    store = next(data_dir.rglob("dataset.json")).parent
    predict = nscfate(
        "nscfate-predict",
        "model=models:/nscfate@champion",
        f"input={store}",
        f"output={tmp_path}/pred.csv",
        f"tracking.uri={server.url}",
        f"hydra.run.dir={tmp_path}/predict",
    )
    cells = pd.read_csv(tmp_path / "pred.csv")
    assert len(cells) > 0 and set(cells["fate"]) <= {"astrocyte", "oligodendrocyte", "neuron"}
    # the champion served from the team server (``make serve`` with MLFLOW_TRACKING_URI=http://...),
    # the login from the environment only; it answers as nscfate-predict did for the same crops
    served = serve_store_crops(server.url, store, rows=4)
    local = cells.set_index("source").loc[served.index]
    for fate in ("astrocyte", "oligodendrocyte", "neuron"):
        assert np.allclose(served[fate], local[f"p_{fate}"], atol=1e-5)
    assert served["fate"].tolist() == local["fate"].tolist()

    client = MlflowClient(server.url)  # the login comes from the environment here too
    os.environ |= {"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": SECRET}
    try:
        exp = client.get_experiment_by_name("team-train")
        (run,) = client.search_runs([exp.experiment_id])
        assert run.info.status == "FINISHED" and "test/f1_macro" in run.data.metrics
        assert "nscfate.model_uri" in run.data.tags
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
        trials = client.search_runs([client.get_experiment_by_name(study).experiment_id])
        assert len(trials) == 3 and {r.info.status for r in trials} == {"FINISHED"}
        champion = client.get_registered_model("nscfate").aliases["champion"]
        assert champion == "1"
    finally:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key, None)
    assert list((tmp_path / "artifacts").rglob("MLmodel"))  # the artifacts sit in the folder

    # the login is nowhere: terminal, files (the server's too), MLflow's and Optuna's tables
    for proc in (train, sweep, promote, predict):
        assert SECRET not in proc.stdout + proc.stderr
    assert SECRET not in server.log.read_text()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in files) and any(p.name == "MLmodel" for p in files)
    assert [p for p in files if SECRET.encode() in p.read_bytes()] == []
    for url, queries in ((server.backend, TRACKING_TEXTS), (storage, OPTUNA_TEXTS)):
        with sqlalchemy.create_engine(url).connect() as conn:
            texts = [str(row[0]) for q in queries for row in conn.execute(sqlalchemy.text(q))]
        assert texts and not [t for t in texts if SECRET in t or USER + ":" in t]


def serve_store_crops(tracking_uri: str, store: Path, rows: int) -> pd.DataFrame:
    """The model server's answer for the first ``rows`` crops of ``store``, indexed by source."""
    images = np.load(store / "images.npy", mmap_mode="r")
    request = json.dumps({"inputs": np.asarray(images[:rows]).tolist()}).encode()
    with model_server(tracking_uri, client_env()) as url:
        post = urllib.request.Request(
            f"{url}/invocations", data=request, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(post, timeout=120) as answer:
            served = pd.DataFrame(json.loads(answer.read())["predictions"])
    served.index = pd.read_csv(store / "index.csv")["source"].iloc[:rows]
    return served


#: Every text MLflow keeps about runs and models: params, tags, locations.
TRACKING_TEXTS = [
    "select value from params",
    "select value from tags",
    "select value from experiment_tags",
    "select artifact_location from experiments",
    "select artifact_uri from runs",
    "select source from model_versions",
]
#: Every text Optuna keeps about studies and trials.
OPTUNA_TEXTS = [
    "select value_json from study_user_attributes",
    "select value_json from trial_user_attributes",
    "select value_json from trial_system_attributes",
]


def _fault_sweep(tmp: Path, data_dir: Path, server: TrackingServer, storage: str, fault) -> str:
    """A 3-trial sweep by two workers (search.workers=2); ``fault()`` strikes once a trial is in
    its second (last) epoch. Returns the study's name."""
    study, args = sweep_args(
        tmp,
        data_dir,
        server,
        storage,
        "optimizer.lr=tag(log,interval(1e-3,1e-2))",
        "search.sampler=random",
        "search.pruner=none",
        "search.n_trials=3",
        "search.workers=2",
        "trainer.max_epochs=2",
        *FAST_HEARTBEAT,
    )
    cmd = [console_script("nscfate-train"), *args]
    proc = subprocess.Popen(
        cmd, env=client_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _wait_for_second_epoch(study, storage, proc)
        fault()
        _, err = proc.communicate(timeout=480)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()[-3000:]
    return study


def _wait_for_second_epoch(study: str, storage: str, proc: subprocess.Popen) -> None:
    def in_epoch_two(trials: list) -> bool:
        return any(
            t.state == TrialState.RUNNING and t.user_attrs.get("epochs", 0) >= 2 for t in trials
        )

    wait_for_trials(study, storage, proc, in_epoch_two, 300, "a trial in its second epoch")


def _assert_complete(study_name: str, storage: str, server: TrackingServer, n: int) -> None:
    """Exactly ``n`` finished trials, distinct parameters, nothing RUNNING or WAITING, and every
    finished trial's MLflow run FINISHED with its metrics and its model (logged or on promotion)."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    standing = standing_trials(study)
    assert len(standing) == n and all(t.state == TrialState.COMPLETE for t in standing)
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.params["optimizer.lr"] for t in standing}) == n
    os.environ |= {"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": SECRET}
    try:
        client = MlflowClient(server.url)
        exp = client.get_experiment_by_name(study_name)
        runs = {r.info.run_id: r for r in client.search_runs([exp.experiment_id])}
    finally:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key, None)
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]
    for t in standing:
        run = runs[t.user_attrs["mlflow_run_id"]]
        assert run.info.status == "FINISHED" and "test/f1_macro" in run.data.metrics
        assert "nscfate.model_uri" in run.data.tags or run.data.tags["nscfate.model"] == (
            "on promotion"
        )
    assert "nscfate.model_uri" in runs[study.best_trial.user_attrs["mlflow_run_id"]].data.tags


def test_a_sweep_survives_its_tracking_server_restarting(server, tmp_path, data_dir, postgres_db):
    storage = postgres_db()

    def restart() -> None:
        server.stop()
        time.sleep(3)
        server.start()

    study = _fault_sweep(tmp_path, data_dir, server, storage, restart)
    _assert_complete(study, storage, server, 3)


def _cluster() -> tuple[str, str] | None:
    """(version, name) of the local PostgreSQL cluster serving NSCFATE_TEST_POSTGRES, if this
    process may restart it (root, pg_ctlcluster, the server on this machine)."""
    url = os.environ.get("NSCFATE_TEST_POSTGRES", "")
    if os.geteuid() != 0 or not shutil.which("pg_lsclusters") or "127.0.0.1" not in url:
        return None
    rows = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout
    for row in rows.splitlines():
        version, name, port, *_ = row.split()
        if port == (url.rsplit(":", 1)[1].split("/")[0]):
            return version, name
    return None


def _pg_ctl(action: str, cluster: tuple[str, str]) -> None:
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, action], check=True, timeout=120
    )


def _pg_ready() -> bool:
    return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"]).returncode == 0


def test_a_sweep_survives_postgresql_restarting(server, tmp_path, data_dir, postgres_db):
    cluster = _cluster()
    if cluster is None:
        pytest.skip("restarting PostgreSQL needs root, pg_ctlcluster and the server on 127.0.0.1")
    storage = postgres_db()
    try:
        study = _fault_sweep(
            tmp_path, data_dir, server, storage, lambda: _pg_ctl("restart", cluster)
        )
    finally:
        if not _pg_ready():  # whatever happened, the server is up again for everyone else
            _pg_ctl("start", cluster)
    _assert_complete(study, storage, server, 3)
