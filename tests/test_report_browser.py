"""The report of a preset run, as headless Chromium renders it: every section there, no broken
image, nothing fetched from anywhere but the file itself; a full-page screenshot is kept in
``test-artifacts/report.png``. Reuses the MLflow UI test's browser (Debian Chromium + Playwright)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import BIN, compose_train
from .test_report import RUN_SECTIONS
from .test_ui_browser import ARTIFACTS, browser, screenshot


def check_in_chromium(report: Path, profile: Path, shot: str) -> dict[str, int]:
    """Open ``report`` in headless Chromium and check it; return the image counts per section."""
    outside: list[str] = []
    with browser(profile) as context:
        page = context.new_page()
        page.on(
            "request",
            lambda r: None if r.url.startswith(("file:", "data:")) else outside.append(r.url),
        )
        with screenshot(page, shot):
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            counts = {}
            for section in RUN_SECTIONS:
                node = page.locator(f"section#{section}")
                assert node.count() == 1 and node.locator("h2").is_visible(), section
                counts[section] = node.locator("img").count()
            broken = page.evaluate(
                "[...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt)"
            )
            assert broken == []
        page.screenshot(path=ARTIFACTS / shot, full_page=True)  # the whole report, kept
    assert outside == []
    return counts


@pytest.mark.slow
def test_a_preset_runs_report_renders_in_chromium(tmp_path, data_dir):
    from nscfate.tracking.run import tracked_train

    cfg = compose_train(
        tmp_path, data_dir, "experiment=time_course", "trainer.max_epochs=2", "cam.per_group=1"
    )
    result = tracked_train(cfg)
    report = tmp_path / "report.html"
    proc = subprocess.run(
        [
            str(BIN / "nscfate-report"),
            f"run_id={result.run_id}",
            f"output={report}",
            f"tracking.uri={cfg.tracking.uri}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = check_in_chromium(report, tmp_path / "profile", "report.png")
    assert counts["accuracy"] == 1 and counts["confusion"] == 1 and counts["calibration"] == 1
    assert counts["fractions"] == 1 and counts["provenance"] == 1 and counts["cam"] == 1
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
