"""Crops to predict and what is known of each cell: a folder, a dataset store, a manifest or one image.

A ``<class>/...`` folder tree keeps what its layout says (label, day, condition); a manifest CSV
needs a ``path`` column and may add ``label``, ``day``, ``condition`` and anything else, which is
carried through to the predictions.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from nscfate.data.imageio import is_image, read_grey
from nscfate.data.ingest import scan_folder
from nscfate.data.schema import canonical_label
from nscfate.data.store import open_store
from nscfate.errors import NscfateError


def load_inputs(path: str | os.PathLike) -> tuple[list[np.ndarray], pd.DataFrame]:
    """Crops and per-cell columns from a folder of images, a dataset store, a manifest or one image."""
    path = Path(path)
    if not path.exists():
        raise NscfateError(f"input={path} does not exist")
    if path.is_dir() and (path / "dataset.json").is_file():
        store = open_store(path)
        index = store.index[["source", "label", "day", "condition"]].copy()
        return list(np.asarray(store.images)), index
    if path.is_file() and path.suffix.lower() == ".csv":
        return _from_manifest(path)
    if path.is_file():
        return [read_grey(path)], pd.DataFrame({"source": [path.name]})
    return _from_folder(path)


def _from_folder(path: Path) -> tuple[list[np.ndarray], pd.DataFrame]:
    files = sorted(p for p in path.rglob("*") if is_image(p))
    if not files:
        raise NscfateError(f"input={path} holds no images (.png/.bmp/.tif/.jpg)")
    try:  # a <class>/... tree: keep what its layout says about each cell
        records = scan_folder(path)
        cells = pd.DataFrame(
            [
                {"source": r.source, "label": r.label, "day": r.day, "condition": r.condition}
                for r in records
            ]
        )
        files = [r.path for r in records]
    except NscfateError:
        cells = pd.DataFrame({"source": [f.relative_to(path).as_posix() for f in files]})
    return [read_grey(f) for f in files], cells


def _from_manifest(path: Path) -> tuple[list[np.ndarray], pd.DataFrame]:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "path" not in df.columns:
        raise NscfateError(f"manifest {path} lacks a path column (found {','.join(df.columns)})")
    if df.empty:
        raise NscfateError(f"manifest {path} lists no images")
    files = [Path(p) if Path(p).is_absolute() else path.parent / p for p in df["path"]]
    cells = df.rename(columns={"path": "source"})
    if "label" in cells:
        cells["label"] = [
            canonical_label(v, f"{path} line {i + 2}") if v else ""
            for i, v in enumerate(cells["label"])
        ]
    if "day" in cells:
        cells["day"] = pd.to_numeric(cells["day"], errors="coerce")
    return [read_grey(f) for f in files], cells
