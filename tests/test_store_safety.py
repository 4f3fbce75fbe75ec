"""A lab's data is safe: --overwrite replaces only a store (never the source), concurrent writers of
one store do not clobber each other, a crash never leaves nothing, and a damaged store is found."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nscfate.data.ingest import ingest
from nscfate.data.store import open_store, verify_store
from nscfate.errors import NscfateError
from nscfate.files import file_lock

from .conftest import console_script

CLI = console_script("nscfate-data")


def _crops(src: Path, n: int = 4) -> Path:
    for label in ("astrocyte", "neuron"):
        (src / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            noise = np.random.default_rng(i).integers(0, 255, (40, 40), dtype=np.uint8)
            Image.fromarray(noise).save(src / label / f"{i}.png")
    return src


def _pngs(src: Path) -> int:
    return len(list(src.rglob("*.png")))


def test_overwrite_never_deletes_a_folder_that_is_not_a_store(tmp_path):
    src = _crops(tmp_path / "src")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep")
    with pytest.raises(NscfateError, match="not a dataset store .* nothing was deleted"):
        ingest(src, precious, overwrite=True)
    assert (precious / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_out_is_never_the_source_or_beside_it_in_the_tree(tmp_path, where):
    src = _crops(tmp_path / "lab" / "src")
    out = {"same": src, "inside": src / "store", "around": tmp_path / "lab"}[where]
    with pytest.raises(NscfateError, match="--out .* source"):
        ingest(src, out, overwrite=True)
    assert _pngs(src) == 8


def test_overwrite_replaces_a_store(tmp_path):
    src = _crops(tmp_path / "src")
    first, _ = ingest(src, tmp_path / "store")
    (src / "neuron" / "0.png").unlink()
    second, _ = ingest(src, tmp_path / "store", overwrite=True)
    assert len(first) == 8 and len(second) == 7 and len(open_store(tmp_path / "store")) == 7


def test_synth_overwrite_refuses_a_folder_that_is_not_a_store(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep")
    proc = subprocess.run(
        [CLI, "synth", "--out", precious, "--overwrite", "--cells-per-group", "2", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and (precious / "notes.txt").exists()
    assert len(proc.stderr.strip().splitlines()) == 1 and "not a dataset store" in proc.stderr


@pytest.mark.parametrize("overwrite", [False, True])
def test_two_concurrent_ingests_of_one_out_one_wins(tmp_path, overwrite):
    src = _crops(tmp_path / "src", n=60)
    out = tmp_path / "store"
    if overwrite:  # both replace an existing store: still only one may
        ingest(src, out)
    cmd = [CLI, "ingest", str(src), "--out", str(out), "--quiet", *(["--overwrite"] * overwrite)]
    with file_lock(tmp_path / ".store.lock"):  # both start while a third writer holds the store
        procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for proc in procs:  # each says it waits, so both overlap whatever their start-up time
            assert "waiting for another process" in proc.stderr.readline()
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 1], results  # never two winners
    loser = next(err for code, err in results if code != 0).strip().splitlines()
    assert len(loser) == 1 and "another process wrote" in loser[0], loser
    verify_store(out)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no half stores left


_GENERATE = """
import sys
from nscfate.data.synthetic_cache import generate_synthetic_store
store = generate_synthetic_store({"cells_per_group": 30, "seed": 5}, __import__("pathlib").Path(sys.argv[1]),
                                 progress=False, reuse_existing=True)
print(store.digest, (store.path / "images.npy").stat().st_ino)
"""


def test_two_workers_generating_the_synthetic_store_share_one(tmp_path):
    out = tmp_path / "synthetic"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _GENERATE, str(out)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outputs[0] == outputs[1]  # same digest, same file: written once, then reused
    verify_store(out)


class _Crash(BaseException):
    """A kill -9 between two steps: no except clause of the writer runs."""


@pytest.mark.parametrize("step", [1, 2, 3])
def test_a_crash_between_any_two_steps_of_a_replace_leaves_a_store(tmp_path, monkeypatch, step):
    import nscfate.data.store as store_module

    src = _crops(tmp_path / "src")
    old, _ = ingest(src, tmp_path / "store")
    (src / "neuron" / "0.png").unlink()
    calls = {"n": 0}  # every step that moves or deletes a directory counts
    monkeypatch.setattr(store_module.os, "rename", _crash_at(step, calls, os.rename))
    monkeypatch.setattr(store_module.shutil, "rmtree", _crash_at(step, calls, shutil.rmtree))
    if hasattr(store_module, "_exchange"):
        monkeypatch.setattr(
            store_module, "_exchange", _crash_at(step, calls, store_module._exchange)
        )
    with contextlib.suppress(_Crash):
        ingest(src, tmp_path / "store", overwrite=True)
    monkeypatch.undo()
    assert len(verify_store(tmp_path / "store")) in (len(old), len(old) - 1)


def _crash_at(step, calls, fn):
    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise _Crash
        return fn(*args, **kwargs)

    return wrapped


def test_a_write_killed_at_random_moments_leaves_the_old_or_the_new_store(tmp_path):
    out = tmp_path / "store"
    base = [CLI, "synth", "--out", str(out), "--quiet", "--cells-per-group", "40"]
    subprocess.run([*base, "--seed", "0"], check=True, capture_output=True, timeout=300)
    digests = {open_store(out).digest}
    rng = np.random.default_rng(0)
    for seed in range(1, 5):
        proc = subprocess.Popen([*base, "--seed", str(seed), "--overwrite"])
        time.sleep(float(rng.uniform(1.0, 3.0)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = verify_store(out)  # never neither, never a half store
        assert store.digest in digests or store.meta["provenance"]["settings"]["seed"] == seed
        digests.add(store.digest)


def test_verify_finds_a_changed_byte(tmp_path):
    src = _crops(tmp_path / "src")
    store, _ = ingest(src, tmp_path / "store")
    assert verify_store(store.path).digest == store.digest
    images = store.path / "images.npy"
    raw = bytearray(images.read_bytes())
    raw[-1] ^= 0xFF
    images.write_bytes(bytes(raw))
    proc = subprocess.run([CLI, "verify", str(store.path)], capture_output=True, text=True)
    assert proc.returncode != 0 and "digest mismatch" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_opening_a_store_checks_shape_and_dtype(tmp_path):
    store, _ = ingest(_crops(tmp_path / "src"), tmp_path / "store")
    meta = json.loads((store.path / "dataset.json").read_text())
    (store.path / "dataset.json").write_text(json.dumps(meta | {"dtype": "uint16"}))
    with pytest.raises(NscfateError, match="dtype"):
        open_store(store.path)
    np.save(store.path / "images.npy", np.zeros((3, 40, 40), np.uint8))
    with pytest.raises(NscfateError, match="inconsistent"):
        open_store(store.path)
