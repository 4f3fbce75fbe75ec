"""The dataset store: what training reads.

A store is a directory holding

- ``images.npy``   all crops as one N x H x W uint8/uint16 array (``np.load(..., mmap_mode="r")``),
- ``index.csv``    one row per cell: label, day, condition, batch, source, plus any extra columns,
- ``dataset.json`` shape, dtype, white level, class counts, days, conditions, provenance and a
  content digest (SHA-256 of the image bytes and the index table).

A store is written into a temporary sibling directory and renamed into place at the end, so a failed
write never leaves a half dataset behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from nscfate.data.schema import CLASSES, REQUIRED_COLUMNS
from nscfate.errors import NscfateError

IMAGES = "images.npy"
INDEX = "index.csv"
META = "dataset.json"
FORMAT_VERSION = 1
_DTYPES = {"uint8": 255, "uint16": 65535}


@dataclass
class DatasetStore:
    """An opened dataset store. Images are memory-mapped, so opening is cheap."""

    path: Path

    @cached_property
    def meta(self) -> dict:
        """The parsed ``dataset.json``."""
        return json.loads((self.path / META).read_text())

    @cached_property
    def index(self) -> pd.DataFrame:
        """The per-cell index table (label, day, condition, batch, source, extra columns)."""
        return read_index(self.path / INDEX)

    @property
    def images(self) -> np.ndarray:
        """The N x H x W image array, memory-mapped read-only (opened anew on each access)."""
        return np.load(self.path / IMAGES, mmap_mode="r")

    @property
    def white_level(self) -> int:
        """The raw value that means full scale (255 for 8-bit, 4095 for 12-bit data, ...)."""
        return int(self.meta["white_level"])

    @property
    def digest(self) -> str:
        """The content digest recorded when the store was written."""
        return str(self.meta["digest"])

    def __len__(self) -> int:
        return int(self.meta["n_cells"])


def open_store(path: str | os.PathLike) -> DatasetStore:
    """Open a dataset store, checking that its three files are there and agree with each other."""
    path = Path(path)
    if not path.is_dir():
        raise NscfateError(
            f"dataset store {path} does not exist (expected a directory made by nscfate-data)"
        )
    for name in (IMAGES, INDEX, META):
        if not (path / name).is_file():
            raise NscfateError(f"{path} is not a dataset store: {name} is missing")
    store = DatasetStore(path)
    try:
        shape = tuple(store.images.shape)
    except ValueError as err:
        raise NscfateError(f"{path / IMAGES} is unreadable: {err}") from err
    if shape != tuple(store.meta["shape"]) or len(store.index) != shape[0]:
        raise NscfateError(
            f"{path} is inconsistent: images {shape}, index {len(store.index)} rows, "
            f"dataset.json shape {store.meta['shape']}"
        )
    return store


def read_index(path: Path) -> pd.DataFrame:
    """Read an index table with the column types nscfate relies on."""
    df = pd.read_csv(
        path,
        dtype={"label": str, "condition": str, "batch": str, "source": str},
        keep_default_na=False,
        na_values={"day": [""]},
    )
    df["day"] = df["day"].astype(float)
    return df


def describe(images: np.ndarray, index: pd.DataFrame) -> dict:
    """The summary fields of ``dataset.json`` (and of ``nscfate-data info``) for a store's content."""
    labels = index["label"]
    counts = {c: int((labels == c).sum()) for c in CLASSES}
    unlabelled = int((labels == "").sum())
    if unlabelled:
        counts["unlabelled"] = unlabelled
    days = sorted({float(d) for d in index["day"].dropna()})
    return {
        "n_cells": int(images.shape[0]),
        "shape": [int(s) for s in images.shape],
        "dtype": str(images.dtype),
        "classes": counts,
        "days": [int(d) if d.is_integer() else d for d in days],
        "conditions": {
            c: int(n) for c, n in index["condition"].value_counts(sort=False).sort_index().items()
        },
        "n_batches": int(index["batch"].nunique()),
    }


def content_digest(images: np.ndarray, index_csv: bytes) -> str:
    """SHA-256 over the image array (shape, dtype, bytes) and the serialised index table."""
    h = hashlib.sha256()
    h.update(f"{images.dtype.str}{images.shape}".encode())
    h.update(np.ascontiguousarray(images).data)
    h.update(index_csv)
    return h.hexdigest()


def write_store(
    out: str | os.PathLike,
    images: np.ndarray,
    index: pd.DataFrame,
    provenance: dict,
    white_level: int | None = None,
    overwrite: bool = False,
) -> DatasetStore:
    """Write a dataset store atomically: into a temporary sibling directory, then rename.

    ``images`` is N x H x W uint8/uint16; ``index`` has one row per image and at least the
    REQUIRED_COLUMNS. An existing ``out`` is only replaced when ``overwrite`` is true.
    """
    out = Path(out)
    _validate(images, index, out)
    if out.exists() and not overwrite:
        raise NscfateError(
            f"output {out} already exists (choose another --out or pass --overwrite)"
        )
    white = int(white_level or _DTYPES[str(images.dtype)])
    index = _ordered(index)
    index_csv = index.to_csv(index=False, lineterminator="\n").encode()
    meta = describe(images, index) | {
        "format_version": FORMAT_VERSION,
        "white_level": white,
        "columns": list(index.columns),
        "provenance": provenance,
        "digest": content_digest(images, index_csv),
    }
    with _staging_dir(out) as tmp:
        np.save(tmp / IMAGES, np.ascontiguousarray(images))
        (tmp / INDEX).write_bytes(index_csv)
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        _replace_dir(tmp, out)
    return open_store(out)


def _validate(images: np.ndarray, index: pd.DataFrame, out: Path) -> None:
    if images.ndim != 3:
        raise NscfateError(
            f"cannot write {out}: images must be N x H x W, got shape {images.shape}"
        )
    if str(images.dtype) not in _DTYPES:
        raise NscfateError(
            f"cannot write {out}: images must be uint8 or uint16, got {images.dtype}"
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in index.columns]
    if missing:
        raise NscfateError(f"cannot write {out}: index lacks columns {missing}")
    if len(index) != images.shape[0]:
        raise NscfateError(
            f"cannot write {out}: {len(index)} index rows for {images.shape[0]} images"
        )


def _ordered(index: pd.DataFrame) -> pd.DataFrame:
    """Required columns first, then the rest in their given order, with a fresh RangeIndex."""
    rest = [c for c in index.columns if c not in REQUIRED_COLUMNS]
    df = index[list(REQUIRED_COLUMNS) + rest].reset_index(drop=True).copy()
    df["day"] = df["day"].astype(float)
    for col in ("label", "condition", "batch", "source"):
        df[col] = df[col].fillna("").astype(str)
    return df


@contextmanager
def _staging_dir(out: Path) -> Iterator[Path]:
    """A temporary directory beside ``out`` (same filesystem, so rename is atomic), removed on error."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(new: Path, out: Path) -> None:
    """Move ``new`` to ``out``; an existing ``out`` is moved aside first and removed only after."""
    if not out.exists():
        os.rename(new, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.rename(out, old)
    try:
        os.rename(new, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
