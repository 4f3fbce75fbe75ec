"""The MLflow UI shows what a sweep and a promotion leave behind, as a real browser renders it.

A real two-trial ``nscfate-train -m`` sweep and a real ``nscfate-promote`` write to a SQLite MLflow
store; the real ``mlflow ui`` serves it on 127.0.0.1; Debian's Chromium, headless and driven by
Playwright, then proves that

* the experiment page shows the experiment ``ui-check`` with the study's parent run, whose nested
  trial runs ``trial-0`` and ``trial-1`` are hidden until the parent row is expanded and then
  shown, linked to the trial runs' ids;
* the registered model page shows ``nscfate`` with ``Version 1`` carrying the ``@ champion`` alias.

The REST API is only used to look up ids; every assertion is on what the browser renders.
Screenshots are kept in ``test-artifacts/`` (also when an assertion fails).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from .conftest import BIN, REPO, TINY_DATA, free_port

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
EXPERIMENT, STUDY, MODEL = "ui-check", "ui-study", "nscfate"
TRIALS = ("trial-0", "trial-1")
#: Two trials of seconds each: one parent run per study, the trials nested under it.
SEARCH = ["search.sampler=random", "search.pruner=none", "search.n_trials=2"]
TINY = ["trainer.max_epochs=2", *TINY_DATA, "~callbacks.early_stopping"]
#: Headless, as root, no GPU, and no traffic anywhere but this machine.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


def _chromium() -> Path:
    """Debian's chromium; installed with `make browser` when missing, else the test is skipped."""
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("make") is None:
        pytest.skip(f"{CHROMIUM} is missing and make is not available to install it")
    proc = subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), "browser"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    if proc.returncode != 0 or not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is missing and `make browser` could not install it: "
            f"{(proc.stderr or proc.stdout)[-500:]}"
        )
    return CHROMIUM


def _run(name: str, *args: str, cwd: Path) -> None:
    proc = subprocess.run(
        [str(BIN / name), *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )
    if proc.returncode != 0:
        pytest.fail(f"{name} failed ({proc.returncode}): {proc.stderr[-3000:]}")


def _sweep_and_promote(tmp: Path, data_dir: Path) -> str:
    """The two-trial sweep, then the promotion of its best trial; returns the tracking URI."""
    storage, uri = f"sqlite:///{tmp}/optuna.db", f"sqlite:///{tmp}/mlflow.db"
    space = ["model=choice(small_cnn)", "optimizer.lr=choice(0.001,0.003)"]
    study = [f"search.study={STUDY}", f"search.storage={storage}"]
    tracking = [f"tracking.uri={uri}", f"tracking.experiment={EXPERIMENT}"]
    out = [f"paths.data_dir={data_dir}", f"hydra.sweep.dir={tmp}/sweep"]
    sweep = ["-m", "search=default", *study, *space, *SEARCH, *tracking, *out, *TINY]
    _run("nscfate-train", *sweep, cwd=tmp)
    _run("nscfate-promote", *study, f"tracking.uri={uri}", f"hydra.run.dir={tmp}/promote", cwd=tmp)
    return uri


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server's whole process group (it starts job consumers), politely, then not."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        deadline = time.time() + 10
        while time.time() < deadline:
            os.killpg(proc.pid, 0)  # raises once the group is gone
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@contextmanager
def mlflow_ui(uri: str, log: Path) -> Iterator[str]:
    """The real `mlflow ui` as `make ui` starts it (one worker, a free port); yields its URL."""
    port = free_port()
    cmd = [str(BIN / "mlflow"), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*cmd, "--port", str(port), "--workers", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"mlflow ui did not come up: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield base
    finally:
        _stop(proc)


def _api(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


@contextmanager
def browser(profile: Path) -> Iterator[BrowserContext]:
    """Headless Debian Chromium with a fresh profile, driven by Playwright (no downloaded browser)."""
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(_chromium()),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 900},
        )
        context.set_default_timeout(30_000)
        expect.set_options(timeout=30_000)  # a slow machine's first page load
        try:
            yield context
        finally:
            context.close()


@contextmanager
def screenshot(page: Page, name: str) -> Iterator[None]:
    """Keep a screenshot of the page as it is at the end of the block, whether or not it passed."""
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        yield
    except BaseException:
        with suppress(PlaywrightError):  # never hide the failure behind a failed screenshot
            page.screenshot(path=ARTIFACTS / name)
        raise
    page.screenshot(path=ARTIFACTS / name)


def _close_assistant(page: Page) -> None:
    """The MLflow Assistant side panel covers part of the table in screenshots: close it if shown."""
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    with suppress(PlaywrightTimeout):
        close.click(timeout=3_000)


def check_experiment_page(page: Page, base: str) -> None:
    experiment_id = _api(base, f"experiments/get-by-name?experiment_name={EXPERIMENT}")[
        "experiment"
    ]["experiment_id"]
    runs = _api(base, "runs/search", {"experiment_ids": [experiment_id]})["runs"]
    run_ids = {r["info"]["run_name"]: r["info"]["run_id"] for r in runs}
    assert set(run_ids) == {STUDY, *TRIALS}  # the data is there; the rest is about what is shown

    page.goto(f"{base}/#/experiments/{experiment_id}/runs")
    with screenshot(page, "mlflow-ui-experiment.png"):
        parent = page.locator(".ag-row").filter(
            has=page.get_by_role("link", name=STUDY, exact=True)
        )
        expect(parent).to_have_count(1)
        expect(page.get_by_role("link", name=EXPERIMENT, exact=True).first).to_be_visible()
        _close_assistant(page)
        for trial in TRIALS:  # nested: collapsed under the parent run
            expect(page.get_by_role("link", name=trial, exact=True)).to_have_count(0)
        parent.locator('button[data-component-id*="runnamecellrenderer"]').click()
        for trial in TRIALS:
            link = page.get_by_role("link", name=trial, exact=True)
            expect(link).to_be_visible()
            expect(link).to_have_attribute("href", re.compile(f"/runs/{run_ids[trial]}$"))


def check_model_page(page: Page, base: str) -> None:
    page.goto(f"{base}/#/models/{MODEL}")
    with screenshot(page, "mlflow-ui-model.png"):
        expect(page.get_by_role("heading", name=MODEL, exact=True)).to_be_visible()
        version = page.get_by_role("row").filter(
            has=page.get_by_role("link", name="Version 1", exact=True)
        )
        expect(version).to_have_count(1)
        # the alias tag ("@ champion"), not a version tag that merely mentions the word
        expect(version.get_by_text(re.compile(r"^@\s*champion$"))).to_be_visible()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mlflow_ui_shows_sweep_and_champion(tmp_path, data_dir):
    _chromium()  # skip before the sweep when there is no browser to drive
    uri = _sweep_and_promote(tmp_path, data_dir)
    with mlflow_ui(uri, tmp_path / "mlflow-ui.log") as base, browser(tmp_path / "profile") as ctx:
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        check_experiment_page(page, base)
        check_model_page(page, base)
