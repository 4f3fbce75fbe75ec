"""A lab's own export trains out of the box: IDEAS-named non-square 24-bit BMPs of varying height,
ingested with ``--format ideas`` and trained with nothing but ``data=`` overrides."""

from __future__ import annotations

import subprocess

import pytest
from mlflow import MlflowClient
from PIL import Image

from nscfate.data.export import synthetic_ideas_export

from .conftest import console_script


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_lab_export_ingests_and_learns_with_the_defaults(tmp_path):
    export = tmp_path / "export"
    files = synthetic_ideas_export(export, cells_per_group=111, seed=1)  # 999 cells, days 1/3/7
    sizes = {Image.open(f).size for f in files[:200]}
    assert len(files) == 999 and {w for w, _ in sizes} == {60} and len({h for _, h in sizes}) > 10
    assert Image.open(files[0]).mode == "RGB"  # 24-bit BMP, as IDEAS writes them
    store = tmp_path / "store"
    ingest = [console_script("nscfate-data"), "ingest", str(export), "--format", "ideas"]
    subprocess.run([*ingest, "--out", str(store)], check=True, capture_output=True, timeout=300)

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    train = [
        console_script("nscfate-train"),
        "data=folder",
        f"data.path={store}",
        f"tracking.uri={uri}",
        f"hydra.run.dir={tmp_path}/run",
    ]
    proc = subprocess.run(train, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("nscfate").experiment_id])
    assert run.data.params["data.batch_size"] == "32"  # the recipe fitted the batch to 500 cells
    assert run.data.metrics["test/f1_macro"] >= 0.6, run.data.metrics
    assert "nscfate.warnings" not in run.data.tags
    assert "learned nothing useful" not in proc.stdout
