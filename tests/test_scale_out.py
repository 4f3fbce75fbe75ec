"""The pieces of the scale-out path that need no server: worker command lines and GPUs
(``search.workers``), the team server's command and auth config, riding out a database outage.
The real processes and servers are exercised in tests/test_team_server.py (slow)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import sqlalchemy.exc
from optuna.exceptions import StorageInternalError

from nscfate.cli import tracking_server
from nscfate.errors import NscfateError
from nscfate.search.storage import connection_lost, retry_outage
from nscfate.search.workers import check_workers, visible_gpus, worker_command, worker_env


def test_each_worker_is_the_command_as_one_worker_in_its_own_folder(tmp_path):
    argv = ["-m", "search=default", "search.workers=3", "search.backend=slurm", "model=small_cnn"]
    cmd = worker_command(argv, tmp_path, 2)
    assert cmd[1:3] == ["-m", "nscfate.cli.train"]
    assert cmd[3:] == [
        "-m",
        "search=default",
        "model=small_cnn",
        "search.workers=1",
        "search.backend=local",
        f"hydra.sweep.dir={tmp_path / 'worker-2'}",
    ]


def test_workers_get_one_gpu_each_round_robin(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    gpus = visible_gpus()
    assert gpus == ["4", "5"]
    assert [worker_env(i, gpus)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["4", "5", "4"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # none visible: the workers' env is untouched
    assert visible_gpus() == [] and worker_env(0, [])["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.parametrize(
    ("workers", "storage", "message"),
    [
        (0, "sqlite:////tmp/o.db", "search.workers=0: expected a whole number"),
        (2, "mysql://db/optuna", "search.workers=2: search.storage=mysql://db/optuna has no lock"),
    ],
)
def test_bad_worker_counts_are_one_line(workers, storage, message):
    with pytest.raises(NscfateError, match=message):
        check_workers(workers, storage)


def test_the_server_serves_artifacts_on_this_machine_unless_told(tmp_path, monkeypatch):
    monkeypatch.delenv("TRACKING_AUTH", raising=False)
    args = tracking_server.parse_args([f"--artifacts={tmp_path}/a", "--port=5099"])
    cmd = tracking_server.server_command(args)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "--serve-artifacts" in cmd
    assert cmd[cmd.index("--artifacts-destination") + 1] == str(tmp_path / "a")
    assert cmd[cmd.index("--backend-store-uri") + 1].startswith("postgresql")
    assert "--app-name" not in cmd
    args = tracking_server.parse_args(["--auth", "--artifacts=s3://bucket/mlflow"])
    cmd = tracking_server.server_command(args)
    assert cmd[-2:] == ["--app-name", "basic-auth"] and "s3://bucket/mlflow" in cmd
    with pytest.raises(NscfateError, match="--backend=sqlite:///x.db: expected a postgresql"):
        tracking_server.ensure_database("sqlite:///x.db")


def test_the_auth_login_comes_from_the_environment_and_is_not_written(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.delenv("MLFLOW_FLASK_SERVER_SECRET_KEY", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "lab-admin")
    with pytest.raises(NscfateError, match="set MLFLOW_TRACKING_USERNAME and"):
        tracking_server.auth_config(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "short")
    with pytest.raises(NscfateError, match="at least 12 characters"):
        tracking_server.auth_config(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "a-long-enough-secret")
    env = tracking_server.auth_config(tmp_path)
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "a-long-enough-secret"
    ini = Path(env["MLFLOW_AUTH_CONFIG_PATH"]).read_text()
    assert "admin_username = lab-admin" in ini and "a-long-enough-secret" not in ini
    key = tmp_path / "flask_secret_key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (
        tracking_server.auth_config(tmp_path)["MLFLOW_FLASK_SERVER_SECRET_KEY"]
        == (env["MLFLOW_FLASK_SERVER_SECRET_KEY"])
    )  # kept across restarts


def _lost() -> Exception:
    err = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    try:
        raise StorageInternalError("commit failed") from err
    except StorageInternalError as wrapped:
        return wrapped


def test_a_database_outage_is_waited_out_other_errors_are_not():
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _lost()
        return "done"

    assert connection_lost(_lost()) and not connection_lost(ValueError("bad value"))
    assert retry_outage(flaky, "test", seconds=5, pause=0.01) == "done" and len(calls) == 3

    def wrong() -> None:
        calls.append(1)
        raise ValueError("bad value")

    calls.clear()
    with pytest.raises(ValueError):
        retry_outage(wrong, "test", seconds=5, pause=0.01)
    assert len(calls) == 1

    def down() -> None:
        raise _lost()

    with pytest.raises(StorageInternalError):  # an outage longer than allowed stands
        retry_outage(down, "test", seconds=0.05, pause=0.01)


def test_the_slurm_array_runs_one_worker_per_task(tmp_path):
    from nscfate.search.workers import slurm_script

    argv = ["-m", "search=default", "optimizer.lr=choice(0.1,0.2)", "search.backend=slurm"]
    script = slurm_script(3, tmp_path, argv, "nscfate-s", ["--gres=gpu:1"])
    lines = script.splitlines()
    assert "#SBATCH --array=0-2" in lines and "#SBATCH --gres=gpu:1" in lines
    assert f"#SBATCH --output={tmp_path}/worker-%a.log" in lines
    run = lines[-1]
    assert run.startswith("exec ") and "'optimizer.lr=choice(0.1,0.2)'" in run
    assert "search.backend=local" in run and "search.backend=slurm" not in run
    assert run.endswith(f'"hydra.sweep.dir={tmp_path}/worker-$SLURM_ARRAY_TASK_ID"')


def test_an_unreachable_storage_is_not_waited_for_even_after_another_was_reached():
    import time

    from nscfate.search.storage import mark_started, storage_lock

    mark_started("postgresql+psycopg2://postgres@127.0.0.1:5432/reached")  # an earlier sweep's
    start = time.monotonic()
    with (
        pytest.raises(NscfateError, match="127.0.0.1:9/nowhere is unreachable"),
        storage_lock("postgresql+psycopg2://nobody@127.0.0.1:9/nowhere", "study"),
    ):
        pass
    assert time.monotonic() - start < 5
