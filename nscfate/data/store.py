"""The dataset store: what training reads.

A store is a directory holding

- ``images.npy``   all crops as one N x H x W uint8/uint16 array (``np.load(..., mmap_mode="r")``),
- ``index.csv``    one row per cell: label, day, condition, batch, source, plus any extra columns,
- ``dataset.json`` shape, dtype, white level, class counts, days, conditions, provenance and a
  content digest (SHA-256 of the image bytes and the index table).

A store is written into a temporary sibling directory, flushed to disk, and swapped into place in
one atomic step, so a failed or killed write leaves the old store or the new one, never neither and
never half of one. Only a dataset store is ever replaced (``--overwrite``), and one process at a time
writes a given store (``store_lock``).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from nscfate.data.schema import CLASSES, REQUIRED_COLUMNS
from nscfate.errors import NscfateError
from nscfate.files import file_lock, fsync_path

log = logging.getLogger(__name__)

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
    if str(store.images.dtype) != store.meta.get("dtype"):
        raise NscfateError(
            f"{path} is inconsistent: images are {store.images.dtype}, dataset.json says dtype "
            f"{store.meta.get('dtype')}"
        )
    return store


def verify_store(path: str | os.PathLike) -> DatasetStore:
    """Open a store and recompute its content digest; a mismatch is an error (changed or damaged)."""
    store = open_store(path)
    actual = content_digest(np.asarray(store.images), (store.path / INDEX).read_bytes())
    if actual != store.digest:
        raise NscfateError(
            f"{store.path}: digest mismatch: dataset.json says {store.digest[:16]}, the content "
            f"hashes to {actual[:16]} (the store was changed or damaged since it was written)"
        )
    return store


def is_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a dataset store: a directory whose ``dataset.json`` nscfate wrote."""
    try:
        meta = json.loads((Path(path) / META).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and {"digest", "format_version", "shape"} <= set(meta)


def check_out(out: str | os.PathLike, overwrite: bool) -> None:
    """Refuse an ``--out`` that exists (unless ``overwrite``) or that is not a store to replace."""
    out = Path(out)
    if not out.exists():
        return
    if not overwrite:
        raise NscfateError(
            f"output {out} already exists (choose another --out or pass --overwrite)"
        )
    if not is_store(out):
        raise NscfateError(
            f"--overwrite replaces only a dataset store, and {out} is not a dataset store (no valid "
            f"{META}): nothing was deleted"
        )


def store_identity(out: str | os.PathLike) -> tuple[int, int] | None:
    """What is at ``out`` now (directory inode, ``dataset.json`` mtime), or None if nothing."""
    out = Path(out)
    if not out.exists():
        return None
    meta = out / META
    return (out.stat().st_ino, meta.stat().st_mtime_ns if meta.exists() else 0)


@contextmanager
def store_lock(out: str | os.PathLike, reuse: bool = False) -> Iterator[None]:
    """Be the one process writing the store ``out`` (a lock file beside it), waiting for another
    writer to finish first. If ``out`` changed meanwhile (another process just wrote it), that is a
    one-line error, never a silent replacement; with ``reuse`` the caller may reuse it instead."""
    out = Path(out)
    lock = out.with_name(f".{out.name}.lock")
    before = store_identity(out)
    with ExitStack() as held:
        try:
            held.enter_context(file_lock(lock, wait=False))
        except BlockingIOError:
            log.warning("waiting for another process that is writing %s", out)
            held.enter_context(file_lock(lock))
        if store_identity(out) != before and not reuse:
            raise NscfateError(
                f"another process wrote {out} while this one was starting: nothing replaced (run "
                "again to replace it)"
            )
        yield


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
    check_out(out, overwrite)
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
        for name in (IMAGES, INDEX, META, "."):  # durable before it becomes the store
            fsync_path(tmp / name)
        check_out(out, overwrite)  # again: another process may have written out meanwhile
        _replace_dir(tmp, out)
        fsync_path(out.parent)
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
    """Put ``new`` at ``out`` in one atomic step; an existing ``out`` ends up at ``new`` (which the
    staging context then removes). A crash at any moment leaves the old or the new store at ``out``."""
    if not out.exists():
        try:
            os.rename(new, out)
        except OSError as err:  # someone created out since check_out: never merge into it
            raise NscfateError(f"another process wrote {out} meanwhile: nothing replaced") from err
        return
    _exchange(new, out)


#: renameat2(2) flag that swaps two paths atomically (Linux >= 3.15).
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> None:
    """Swap two directories in one step (Linux ``renameat2(RENAME_EXCHANGE)``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise NscfateError(f"cannot replace {b} atomically on this system (no renameat2)")
    done = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if done != 0:
        code = ctypes.get_errno()
        raise NscfateError(f"cannot replace {b} atomically: {errno.errorcode.get(code, code)}")
