"""nscfate-report: one self-contained HTML file from a tracked run, its figures embedded, its
numbers those the run logged, and the file logged back on the run; bad input is one line."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from nscfate.report.figures import accuracy_intervals

from .conftest import run_cli

#: Every section a run's report has (section ids).
RUN_SECTIONS = ("provenance", "accuracy", "confusion", "calibration", "fractions", "cam")


@pytest.fixture(scope="module")
def tracked(tracked_run):
    """The session's tiny tracked run (conftest), as this module reads it."""
    cfg, result, tmp = tracked_run
    return result, cfg.tracking.uri, tmp


def test_a_runs_report_has_every_section_its_logged_numbers_and_is_logged(tracked):
    result, uri, tmp = tracked
    out = tmp / "out" / "r.html"
    code, stdout, stderr = run_cli(
        "report",
        f"run_id={result.run_id}",
        f"tracking.uri={uri}",
        f"output={out}",
        "report.n_boot=50",
    )
    assert code == 0, stderr
    html = out.read_text()
    for section in RUN_SECTIONS:
        assert f'<section id="{section}">' in html
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) >= 5 and all(s.startswith("data:image/png;base64,") for s in images)
    assert "http://" not in html and "https://" not in html  # nothing outside the file
    client = MlflowClient(uri)
    tags = client.get_run(result.run_id).data.tags
    assert tags["nscfate.dataset_digest"] in html and tags["nscfate.split_digest"] in html
    num = r'<td class="num">([^<]*)</td>'
    rows = {float(m[0]): m for m in re.findall("<tr>" + num * 6 + "</tr>", html)}
    for day, acc in result.accuracy_by_day.items():  # the run's own accuracy and oracle per day
        _, _, shown, low, high, oracle = rows[day]
        assert shown == f"{acc:.3f}" and float(low) <= acc <= float(high)
        assert oracle == f"{result.oracle_by_day[day]:.3f}"
    assert 'alt="cam/gallery.png"' in html  # the run's Grad-CAM gallery
    logged = [a.path for a in client.list_artifacts(result.run_id, "report")]
    assert logged == ["report/r.html"] and f"MLflow run {result.run_id}" in stdout


def test_accuracy_intervals_hold_the_accuracy_and_narrow_with_more_cells():
    rng = np.random.default_rng(0)

    def cells(n: int) -> pd.DataFrame:
        hit = rng.random(n) < 0.8
        return pd.DataFrame(
            {
                "split": "test",
                "label": "neuron",
                "day": 1.0,
                "predicted": np.where(hit, "neuron", "astrocyte"),
            }
        )

    small, large = accuracy_intervals(cells(50)), accuracy_intervals(cells(2000))
    for t in (small, large):
        row = t.iloc[0]
        assert row.ci_low < row.accuracy < row.ci_high
    assert (large.ci_high - large.ci_low)[0] < (small.ci_high - small.ci_low)[0] / 3
    assert accuracy_intervals(cells(50), seed=1).shape == (1, 5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give exactly one of run_id="),
        (["run_id=abc", "report.n_boot=3"], "report.n_boot=3"),
        (["run_id=0123456789abcdef0123456789abcdef"], "run_id=0123456789abcdef0123456789abcdef"),
        (["report.experiment=nothing-here"], "report.experiment='nothing-here'"),
    ],
)
def test_bad_input_is_one_line_naming_the_key(tracked, args, message):
    _, uri, tmp = tracked
    code, _, stderr = run_cli("report", f"tracking.uri={uri}", f"output={tmp}/x.html", *args)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code != 0 and message in stderr and len(lines) == 1, stderr
    assert not (tmp / "x.html").exists()


def test_grad_cam_points_at_the_evidence():
    """A network whose first fate's logit is the mean activation over a bright patch: its map
    peaks on the patch and is dark elsewhere."""
    import torch
    from torch import nn

    from nscfate.evaluation.cam import activation_maps

    net = nn.Sequential(
        nn.Conv2d(1, 1, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(1, 3),
    )
    with torch.no_grad():
        net[0].weight.fill_(1 / 9)
        net[4].weight.copy_(torch.tensor([[1.0], [0.0], [-1.0]]))
        net[4].bias.zero_()
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 4:10, 20:26] = 1.0
    maps, explained = activation_maps(net, x)
    peak = np.unravel_index(maps[0].argmax(), maps[0].shape)
    assert explained.tolist() == [0] and 4 <= peak[0] < 10 and 20 <= peak[1] < 26
    assert maps[0][16:, :12].max() < 0.05 and net[0].weight.grad is None  # net untouched


@pytest.mark.slow
def test_predict_cam_writes_one_map_per_crop(tracked, sample_pngs):
    from PIL import Image

    result, uri, tmp = tracked
    out = tmp / "pred" / "p.csv"
    code, stdout, stderr = run_cli(
        "predict",
        f"model={result.run_id}",
        f"input={sample_pngs[0].parent}",
        f"output={out}",
        f"tracking.uri={uri}",
        "cam=true",
    )
    assert code == 0, stderr
    written = sorted((tmp / "pred" / "p_cam").glob("*.png"))
    stems = sorted(p.stem.split("_", 1)[1] for p in written)
    assert stems == sorted(p.stem for p in sample_pngs) and "6 ->" in stdout
    assert all(Image.open(p).size[0] > 100 for p in written)
