"""Shared fixtures: real sample crops, tiny synthetic stores, Hydra-composed configs."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.tiny import TINY_DATA

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # make test runs one pytest-xdist worker per core: one thread each (and in their subprocesses),
    # or two workers' thread pools spin against each other on the same cores
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "samples" / "zhu2021"
CONF = REPO / "conf"
#: Where this environment's console scripts (nscfate-*, mlflow, optuna) live.
BIN = Path(sys.executable).parent


def console_script(name: str) -> str:
    """Absolute path of an installed console script, e.g. ``nscfate-predict`` or ``mlflow``."""
    return str(BIN / name)


def run_cli(module: str, *args: str) -> tuple[int, str, str]:
    """Run a console script's ``main`` in this process (``nscfate.cli.<module>``) with ``args`` as
    its command line: (exit code, stdout, stderr). Cheaper than a subprocess by the imports; one
    subprocess test per CLI still checks the installed entry point."""
    import contextlib
    import importlib
    import io

    from hydra.core.global_hydra import GlobalHydra

    main = importlib.import_module(f"nscfate.cli.{module}").main
    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, [f"nscfate-{module}", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
        if isinstance(stop.code, str):
            err.write(stop.code)
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
    return code, out.getvalue(), err.getvalue()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def model_server(tracking_uri: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """MLflow's scoring server (``mlflow models serve``, what ``make serve`` runs) on the champion
    of ``tracking_uri``, on a free local port; yields its URL once ``/ping`` answers, stops it
    (its whole process group) after."""
    import subprocess
    import time
    import urllib.request

    port = free_port()
    bindir = str(Path(sys.executable).parent)  # the scoring server starts uvicorn from PATH
    env = dict(env or os.environ, MLFLOW_TRACKING_URI=tracking_uri)
    env["PATH"] = f"{bindir}:{env.get('PATH', '')}"
    cmd = [console_script("mlflow"), "models", "serve", "-m", "models:/nscfate@champion"]
    cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail(f"the model server did not come up: {server.stderr.read()[-2000:]}")
        yield url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
        server.wait(timeout=30)


def wait_for_trials(study: str, storage: str, proc, ready, timeout: float, what: str) -> list:
    """Poll the Optuna ``study`` while ``proc`` (a running sweep) lives, until ``ready(trials)``
    is true; returns the trials of that moment. Fails the test naming ``what`` it waited for."""
    import time

    import optuna

    from nscfate.search.storage import open_storage

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name=study, storage=open_storage(storage)).trials
        except KeyError:  # the sweep has not created its study yet
            continue
        if ready(trials):
            return trials
    ended = proc.stdout.read()[-3000:] if proc.poll() is not None and proc.stdout else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} {ended}")


@pytest.fixture(scope="session")
def sample_pngs() -> list[Path]:
    """The six real 45x30 crops from Zhu et al. 2021 (shared/samples/zhu2021)."""
    files = sorted(SAMPLES.glob("*.png"))
    if len(files) != 6:
        pytest.skip(f"real sample crops not found at {SAMPLES}")
    return files


@pytest.fixture
def sample_tree(tmp_path: Path, sample_pngs: list[Path]) -> Path:
    """The real crops as a folder tree <class>/<file>."""
    root = tmp_path / "real"
    for f in sample_pngs:
        label = f.stem.rsplit("_", 1)[0]
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / label / f.name)
    return root


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory):
    """A small synthetic store (seeded), shared by the tests that only read it."""
    from nscfate.data.synthetic_cache import generate_synthetic_store

    out = tmp_path_factory.mktemp("synth") / "tiny"
    settings = {"seed": 3, "cells_per_group": 15, "confound": 0.5}
    return generate_synthetic_store(settings, out, progress=False)


@pytest.fixture(scope="session")
def nonsquare_stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small ingested stores of non-square crops: the paper's 45x30 and an export's 57x60."""
    from nscfate.data.export import synthetic_ideas_export
    from nscfate.data.ingest import ingest

    root = tmp_path_factory.mktemp("nonsquare")
    shapes = {"45x30": dict(size=48, width=30, heights=(45, 45)), "57x60": {}}
    stores = {}
    for name, shape in shapes.items():
        synthetic_ideas_export(root / f"export-{name}", cells_per_group=12, **shape)
        stores[name] = ingest(root / f"export-{name}", root / f"store-{name}", fmt="ideas")[0].path
    return stores


@pytest.fixture
def postgres_db():
    """Make fresh PostgreSQL databases on the server at NSCFATE_TEST_POSTGRES (CI sets it); each
    call returns a new database's URL; all are dropped afterwards."""
    url = os.environ.get("NSCFATE_TEST_POSTGRES")
    if not url:
        pytest.skip("NSCFATE_TEST_POSTGRES is not set (CI sets it)")
    import sqlalchemy

    # pre-ping: a test may restart the server (tests/test_team_server.py), killing pooled connections
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    made: list[str] = []

    def make() -> str:
        made.append(f"nscfate_test_{uuid.uuid4().hex[:8]}")
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"CREATE DATABASE {made[-1]}"))
        return url.rsplit("/", 1)[0] + f"/{made[-1]}"

    yield make
    with admin.connect() as conn:
        for name in made:
            conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def postgres_url(postgres_db) -> str:
    """One fresh PostgreSQL database (see ``postgres_db``)."""
    return postgres_db()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder per test session: the tiny synthetic store is generated once, then reused."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tracked_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path):
    """One tiny tracked run (3 epochs on the tiny store, with a CAM gallery) in its own SQLite
    MLflow store, shared by the tests that read what a run logged: ``(cfg, result, tmp)``."""
    import matplotlib.pyplot as plt

    from nscfate.tracking.run import tracked_train

    tmp = tmp_path_factory.mktemp("tracked")
    cfg = compose_train(tmp, data_dir, "trainer.max_epochs=3", "cam.per_group=1")
    result = tracked_train(cfg)
    assert plt.get_fignums() == []  # every figure the run drew was closed (CAM gallery too)
    return cfg, result, tmp


#: Overrides that make a training run take seconds on CPU.
FAST = [*TINY_DATA, "trainer.max_epochs=2", "trainer.log_every_n_steps=1"]


def compose_train(tmp_path: Path, data_dir: Path, *overrides: str, fast: bool = True):
    """conf/train.yaml composed as the CLI would, with per-test output and tracking locations."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import nscfate.paths  # noqa: F401  (registers ${nscfate.repo:})

    base = [
        f"paths.data_dir={data_dir}",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        "tracking.experiment=test",
        *(FAST if fast else []),
    ]
    if any(o.startswith("data=") and o != "data=synthetic" for o in overrides):
        base = [o for o in base if not o.startswith("data.synthetic.")]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*base, *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "out")
        cfg.hydra.runtime.output_dir = str(tmp_path / "out")
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as in the CLI: the task sees no hydra node, ${hydra:...} still resolves
    return cfg
