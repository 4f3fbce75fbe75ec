"""The paper's studies as presets (experiments/*.yaml): each composes with debug=fdr and says what
it reproduces and how long it takes here and on a GPU; run, each goes through (slow tier), and a
sweep preset's study renders as a report with its comparison, history and importances."""

from __future__ import annotations

import math
import re
import subprocess

import pytest

from .conftest import BIN, REPO, TINY_DATA, compose_train

PRESETS = sorted(p.stem for p in (REPO / "experiments").glob("*.yaml"))
#: The paper's studies (issue 14); every one must exist.
STUDIES = {
    "time_course",
    "early_prediction",
    "inducers",
    "architectures",
    "augmentations",
    "learning_curve",
}


def test_every_study_has_a_preset():
    assert set(PRESETS) >= STUDIES


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_under_fdr_and_states_its_cost(tmp_path, data_dir, name):
    cfg = compose_train(tmp_path, data_dir, f"experiment={name}", "debug=fdr")
    assert cfg.task_name == name and cfg.trainer.fast_dev_run is True
    header = " ".join(
        line.lstrip("# ")
        for line in (REPO / "experiments" / f"{name}.yaml").read_text().splitlines()
        if line.startswith("#")
    )
    assert "GPU" in header and ("this 2-core machine" in header or "on this CPU" in header)
    assert re.search(r"\d+ (minutes|hours|min)", header), header
    if cfg.get("search"):  # a sweep preset: a space to search and a named study
        assert cfg.search.params and cfg.search.study


def _sweep(tmp_path, name: str) -> subprocess.CompletedProcess:
    args = [
        f"experiment={name}",
        "debug=fdr",
        "tracking=mlflow",
        "search.n_trials=2",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        f"search.storage=sqlite:///{tmp_path}/optuna.db",
        f"paths.data_dir={tmp_path}/data",
        f"hydra.sweep.dir={tmp_path}/sweep",
        *TINY_DATA,
    ]
    return subprocess.run(
        [str(BIN / "nscfate-train"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_preset_runs_under_fdr(tmp_path, data_dir, name):
    cfg = compose_train(tmp_path, data_dir, f"experiment={name}", "debug=fdr", fast=False)
    if not cfg.get("search"):
        from nscfate.tracking.run import tracked_train

        cfg = compose_train(tmp_path, data_dir, f"experiment={name}", "debug=fdr")
        result = tracked_train(cfg)
        assert math.isfinite(result.metrics["train/loss"]) and "test/f1_macro" in result.metrics
        return
    proc = _sweep(tmp_path, name)
    assert proc.returncode == 0, proc.stderr[-2000:]
    study = cfg.search.study
    report = tmp_path / "study.html"
    proc = subprocess.run(
        [
            str(BIN / "nscfate-report"),
            f"search.study={study}",
            f"output={report}",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            f"search.storage=sqlite:///{tmp_path}/optuna.db",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    html = report.read_text()
    for section in ("comparison", "history", "importances", "accuracy", "fractions"):
        assert f'<section id="{section}">' in html
    assert html.count('<tr><td class="num">') >= 2  # one row per trial at least
