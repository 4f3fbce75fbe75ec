"""Shared fixtures: real sample crops, tiny synthetic stores, Hydra-composed configs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "samples" / "zhu2021"
CONF = REPO / "conf"


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
    from nscfate.data.builtin import generate_synthetic_store

    out = tmp_path_factory.mktemp("synth") / "tiny"
    settings = {"seed": 3, "cells_per_group": 15, "confound": 0.5}
    return generate_synthetic_store(settings, out, progress=False)
