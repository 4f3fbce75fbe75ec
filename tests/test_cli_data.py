"""``nscfate-data`` as a user runs it: real processes, JSON out, one-line errors, nothing half-written."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from .conftest import console_script, run_cli

CLI = console_script("nscfate-data")


def run(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=300)
    if ok and proc.returncode != 0:
        pytest.fail(f"nscfate-data {' '.join(map(str, args))} failed: {proc.stderr}")
    return proc


def info(store: Path) -> dict:
    return json.loads(run("info", store).stdout)


def test_synth_is_deterministic_and_described(tmp_path):
    for name in ("a", "b"):
        run("synth", "--out", tmp_path / name, "--seed", "7", "--cells-per-group", "6", "--quiet")
    a, b = info(tmp_path / "a"), info(tmp_path / "b")
    assert a["digest"] == b["digest"]
    assert {"n_cells", "shape", "dtype", "classes", "days", "conditions", "digest"} <= set(a)
    assert set(a["classes"]) == {"astrocyte", "oligodendrocyte", "neuron"}
    assert a["shape"][1:] == [64, 64] and a["dtype"] == "uint8"
    assert "control" in a["conditions"] and len(a["conditions"]) >= 3
    run("synth", "--out", tmp_path / "c", "--seed", "8", "--cells-per-group", "6", "--quiet")
    assert info(tmp_path / "c")["digest"] != a["digest"]


def test_synth_options_reach_the_store(tmp_path):
    run(
        "synth",
        "--out",
        tmp_path / "s",
        "--size",
        "48",
        "--cells-per-group",
        "4",
        "--days",
        "1,7",
        "--bit-depth",
        "16",
        "--quiet",
    )
    d = info(tmp_path / "s")
    assert d["shape"][1:] == [48, 48] and d["dtype"] == "uint16" and d["days"] == [1, 7]
    refused = run("synth", "--out", tmp_path / "s", "--quiet", ok=False)
    assert refused.returncode != 0 and "already exists" in refused.stderr


def test_preview_split_and_oracle(tmp_path, tiny_synth):
    run("preview", tiny_synth.path, "--out", tmp_path / "sheet.png")
    with Image.open(tmp_path / "sheet.png") as im:
        assert im.size[0] > 300 and im.size[1] > 300
    split = json.loads(run("split", tiny_synth.path, "--holdout", "NT3").stdout)
    assert len(split["digest"]) == 64 and {"train", "val", "test", "indep:NT3"} <= set(
        split["counts"]
    )
    oracle = json.loads(run("oracle", tiny_synth.path).stdout)["oracle_accuracy_by_day"]
    assert set(oracle) == {"1", "3", "5", "7"} and all(0 <= v <= 1 for v in oracle.values())


def test_ingest_real_samples(sample_tree, tmp_path):
    proc = run("ingest", sample_tree, "--out", tmp_path / "store", "--format", "folder")
    assert json.loads(proc.stdout)["n_cells"] == 6
    assert info(tmp_path / "store")["shape"] == [6, 45, 30]
    run("preview", tmp_path / "store", "--out", tmp_path / "real.png")
    assert (tmp_path / "real.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "{tmp}/nope", "--out", "{tmp}/bad"], "does not exist"),
        (["ingest", "{tmp}/empty", "--out", "{tmp}/bad"], "no images found"),
        (["ingest", "{tmp}/m.csv", "--out", "{tmp}/bad"], "lacks column"),
        (["info", "{tmp}/empty"], "not a dataset store"),
        (["ingest", "{tmp}/empty", "--out", "{tmp}/bad", "--size", "big"], "--size 'big'"),
        (["synth", "--out", "{tmp}/bad", "--days", "one"], "--days 'one'"),
    ],
)
def test_bad_input_one_line_no_traceback_no_output(tmp_path, args, message):
    """The first case as a real process (exit status, the installed entry point), the others
    through the same ``main`` in this process."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "m.csv").write_text("file,class\nx.png,neuron\n")
    argv = [a.format(tmp=tmp_path) for a in args]
    if message == "does not exist":
        proc = run(*argv, ok=False)
        code, stderr = proc.returncode, proc.stderr
    else:
        code, _, stderr = run_cli("data", *argv)
    assert code == 1
    assert message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
