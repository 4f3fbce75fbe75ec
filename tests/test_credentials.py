"""A password inside a URI setting never leaves the process: not in MLflow, not in any file a run or
a sweep writes, not on the terminal. PostgreSQL here trusts any password, so one can be planted."""

from __future__ import annotations

import subprocess

import pytest
import sqlalchemy

from .conftest import TINY_DATA, console_script

SECRET = "PlantedSecret4711"
pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(900)]


def _with_password(url: str) -> str:
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{SECRET}@{host}"


def _train(*args: str) -> subprocess.CompletedProcess:
    cmd = [console_script("nscfate-train"), *args, *TINY_DATA, "trainer.max_epochs=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_a_planted_password_is_nowhere(tmp_path, data_dir, postgres_db):
    tracking, storage = _with_password(postgres_db()), _with_password(postgres_db())
    common = [
        f"tracking.uri={tracking}",
        f"tracking.artifact_location={tmp_path}/artifacts",
        f"paths.data_dir={data_dir}",
    ]
    run = _train(*common, f"hydra.run.dir={tmp_path}/run")
    sweep = _train(
        "-m",
        "search=default",
        "optimizer.lr=choice(0.001,0.002)",
        "search.n_trials=1",
        "search.sampler=grid",
        f"search.storage={storage}",
        *common,
        f"hydra.sweep.dir={tmp_path}/sweep",
    )
    for proc in (run, sweep):
        assert SECRET not in proc.stdout + proc.stderr  # terminal and logs
        assert "postgres:***@" in proc.stdout + proc.stderr  # redacted, not dropped
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in files) and any(
        p.name == "sweep_summary.yaml" for p in files
    )
    assert any(p.parent.name == ".hydra" for p in files) and any(
        p.name == "config.yaml" for p in files
    )
    leaks = [p for p in files if SECRET.encode() in p.read_bytes()]
    assert leaks == []
    for url, tables in ((tracking, _tracking_texts), (storage, _optuna_texts)):
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as conn:
            texts = [row[0] for query in tables for row in conn.execute(sqlalchemy.text(query))]
        assert texts and not [t for t in texts if t and SECRET in t]


#: Every text MLflow keeps about runs: params, tags (runs and experiments), locations.
_tracking_texts = [
    "select value from params",
    "select value from tags",
    "select value from experiment_tags",
    "select artifact_location from experiments",
    "select artifact_uri from runs",
]
#: Every text Optuna keeps about studies and trials.
_optuna_texts = [
    "select value_json from study_user_attributes",
    "select value_json from trial_user_attributes",
    "select value_json from trial_system_attributes",
]
