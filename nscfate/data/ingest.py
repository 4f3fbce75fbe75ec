"""Bring-your-own data: folder trees, CSV manifests and IDEAS/ImageStream exports into a store.

Every source is first *scanned* into records (file, label, day, condition, batch, extra columns),
then the crops are read, fitted to one size and written as a dataset store. Scanning is where the
formats differ; everything after it is shared.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from nscfate.data.imageio import fit_to_size, is_image, read_grey
from nscfate.data.schema import CLASSES, CONTROL, canonical_label
from nscfate.data.store import DatasetStore, check_out, store_lock, write_store
from nscfate.errors import NscfateError

FORMATS: tuple[str, ...] = ("folder", "csv", "ideas")
MANIFEST_REQUIRED: tuple[str, ...] = ("path", "label")
MANIFEST_OPTIONAL: tuple[str, ...] = ("day", "condition", "batch")

_DAY_DIR = re.compile(r"^(?:day|d)?[_-]?(\d+(?:\.\d+)?)$", re.IGNORECASE)
IDEAS_NAME = re.compile(
    r"^(?P<cls>[aon])_(?P<day>\d+(?:\.\d+)?)d(?P<rep>\d+)_(?P<obj>\d+)_Ch(?P<ch>\d+)"
    r"\.ome\.(?:bmp|png|tif|tiff)$",
    re.IGNORECASE,
)


@dataclass
class Record:
    """One cell to ingest: where its crop is and what is known about it."""

    path: Path
    label: str
    day: float = math.nan
    condition: str = CONTROL
    batch: str = ""
    source: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class IngestReport:
    """What an ingest did: cells written and files skipped (with reasons)."""

    n_cells: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def detect_format(src: Path) -> str:
    """Guess the source format: a .csv file is a manifest, IDEAS-named files an export, else a folder."""
    if src.is_file() and src.suffix.lower() == ".csv":
        return "csv"
    if src.is_dir() and any(IDEAS_NAME.match(p.name) for p in src.rglob("*") if p.is_file()):
        return "ideas"
    return "folder"


def scan_folder(src: Path, **_: object) -> list[Record]:
    """Scan ``<class>/[<day>/][<condition>/][...]/crop.png``.

    The first level names the class; a level like ``day3``/``d3``/``3`` gives the day; the next
    level, if any, the condition (else ``control``). A crop's batch is the folder it sits in.
    """
    records = []
    for path in _image_files(src):
        rel = path.relative_to(src)
        dirs = list(rel.parts[:-1])
        if not dirs:
            raise NscfateError(
                f"{path} is not inside a <class>/ folder (expected {src}/<class>/...)"
            )
        label = canonical_label(dirs[0], where=f"folder {src / dirs[0]}")
        rest = dirs[1:]
        day = math.nan
        if rest and (m := _DAY_DIR.match(rest[0])):
            day, rest = float(m.group(1)), rest[1:]
        condition = rest[0] if rest else CONTROL
        batch = "/".join(dirs)
        records.append(Record(path, label, day, condition, batch, rel.as_posix()))
    return records


def scan_manifest(src: Path, **_: object) -> list[Record]:
    """Scan a CSV manifest with columns ``path,label[,day,condition,batch,...]``.

    Paths are relative to the manifest's folder (or absolute). Extra columns are kept.
    """
    try:
        df = pd.read_csv(src, dtype=str, keep_default_na=False)
    except Exception as err:
        raise NscfateError(f"cannot read manifest {src}: {err}") from err
    missing = [c for c in MANIFEST_REQUIRED if c not in df.columns]
    if missing:
        raise NscfateError(
            f"manifest {src} lacks column(s) {', '.join(missing)}: expected a header "
            f"path,label[,{','.join(MANIFEST_OPTIONAL)}] (found {','.join(df.columns)})"
        )
    extra_cols = [c for c in df.columns if c not in MANIFEST_REQUIRED + MANIFEST_OPTIONAL]
    return [
        _manifest_record(src, row, line, extra_cols)
        for line, row in enumerate(df.to_dict("records"), start=2)
    ]


def _manifest_record(src: Path, row: dict, line: int, extra_cols: list[str]) -> Record:
    where = f"{src} line {line}"
    if not row["path"].strip():
        raise NscfateError(f"{where}: empty path")
    path = Path(row["path"])
    path = path if path.is_absolute() else src.parent / path
    day = _parse_day(row.get("day", ""), where)
    label = canonical_label(row["label"], where=where)
    batch = row.get("batch", "").strip() or Path(row["path"]).parent.as_posix()
    condition = row.get("condition", "").strip() or CONTROL
    extra = {c: row[c] for c in extra_cols}
    return Record(path, label, day, condition, batch, row["path"], extra)


def _parse_day(text: str, where: str) -> float:
    if not str(text).strip():
        return math.nan
    m = _DAY_DIR.match(str(text).strip())
    if not m:
        raise NscfateError(f"{where}: day {text!r} is not a number (expected e.g. 1, 3.5 or day3)")
    return float(m.group(1))


def scan_ideas(src: Path, channel: int = 1, condition: str = CONTROL, **_: object) -> list[Record]:
    """Scan an IDEAS/ImageStream export: ``<a|o|n>_<day>d<replicate>_<object>_Ch<k>.ome.<ext>``.

    Only channel ``channel`` (bright field, Ch1 by default) is read. The batch is the
    class-day-replicate culture (``a_1d1``), prefixed by its sub-folder when the export is nested.
    """
    records = []
    for path in _image_files(src):
        m = IDEAS_NAME.match(path.name)
        if not m:
            raise NscfateError(
                f"{path}: not an IDEAS export name (expected <a|o|n>_<day>d<rep>_<object>_Ch<k>.ome.bmp, "
                "e.g. a_1d1_10_Ch1.ome.bmp)"
            )
        if int(m["ch"]) != channel:
            continue
        rel = path.relative_to(src)
        culture = f"{m['cls'].lower()}_{m['day']}d{m['rep']}"
        batch = "/".join([*rel.parts[:-1], culture])
        extra = {"replicate": int(m["rep"]), "object_id": int(m["obj"]), "channel": int(m["ch"])}
        label = canonical_label(m["cls"], where=str(path))
        records.append(
            Record(path, label, float(m["day"]), condition, batch, rel.as_posix(), extra)
        )
    return records


SCANNERS: dict[str, Callable[..., list[Record]]] = {
    "folder": scan_folder,
    "csv": scan_manifest,
    "ideas": scan_ideas,
}


def _image_files(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("*") if is_image(p))


def ingest(
    src: str | Path,
    out: str | Path,
    fmt: str | None = None,
    size: tuple[int, int] | None = None,
    skip_bad: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    **scan_options: object,
) -> tuple[DatasetStore, IngestReport]:
    """Ingest ``src`` (folder, CSV manifest or IDEAS export) into a new dataset store at ``out``.

    ``size`` (height, width) defaults to the largest crop's; smaller crops are centre-padded with
    their own background level, larger ones centre-cropped. Unreadable files abort the ingest
    unless ``skip_bad``, which skips them and lists them in the report.
    """
    src, out = Path(src), Path(out)
    if not src.exists():
        raise NscfateError(f"source {src} does not exist")
    fmt = fmt or detect_format(src)
    if fmt not in SCANNERS:
        raise NscfateError(f"unknown --format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "csv" and not src.is_file():
        raise NscfateError(f"--format csv needs a manifest file, but {src} is a directory")
    if fmt != "csv" and not src.is_dir():
        raise NscfateError(f"--format {fmt} needs a directory, but {src} is a file")
    _check_out_outside(src, out)
    check_out(out, overwrite)
    with store_lock(out):
        return _ingest(src, out, fmt, size, skip_bad, overwrite, progress, scan_options)


def _check_out_outside(src: Path, out: Path) -> None:
    """``--out`` is never the source, a folder inside it, or a folder that holds it."""
    s, o = src.resolve(), out.resolve()
    if o == s or s in o.parents or o in s.parents:
        where = "is" if o == s else "is inside" if s in o.parents else "holds"
        raise NscfateError(
            f"--out {out} {where} the source {src}: choose a folder outside the source (nothing "
            "was written or deleted)"
        )


def _ingest(
    src: Path,
    out: Path,
    fmt: str,
    size: tuple[int, int] | None,
    skip_bad: bool,
    overwrite: bool,
    progress: bool,
    scan_options: dict,
) -> tuple[DatasetStore, IngestReport]:
    records = SCANNERS[fmt](src, **scan_options)
    if not records:
        raise NscfateError(
            f"no images found in {src} (expected .png/.bmp/.tif crops laid out as --format {fmt})"
        )
    report = IngestReport()
    crops, kept = _read_all(records, skip_bad, report, progress)
    _check_classes(kept, src)
    images, white = _stack(crops, size)
    index = _index_table(kept)
    provenance = {
        "ingested_from": str(src.resolve()),
        "format": fmt,
        "skipped": len(report.skipped),
    }
    store = write_store(out, images, index, provenance, white_level=white, overwrite=overwrite)
    report.n_cells = len(store)
    return store, report


def _read_all(
    records: list[Record], skip_bad: bool, report: IngestReport, progress: bool
) -> tuple[list[np.ndarray], list[Record]]:
    crops, kept = [], []
    for rec in tqdm(records, desc="reading crops", unit="crop", disable=not progress):
        if not rec.path.is_file():
            err = NscfateError(f"image {rec.path} does not exist")
        else:
            try:
                crops.append(read_grey(rec.path))
                kept.append(rec)
                continue
            except NscfateError as e:
                err = e
        if not skip_bad:
            raise err
        report.skipped.append((str(rec.path), str(err)))
    if not kept:
        raise NscfateError(f"none of the {len(records)} images could be read")
    return crops, kept


def _check_classes(records: list[Record], src: Path) -> None:
    present = sorted({r.label for r in records}, key=CLASSES.index)
    if len(present) < 2:
        raise NscfateError(
            f"{src} holds only one class ({', '.join(present)}): a training set needs at least two "
            f"of {', '.join(CLASSES)}"
        )


def _stack(crops: list[np.ndarray], size: tuple[int, int] | None) -> tuple[np.ndarray, int]:
    """Fit every crop to one size and one dtype; returns the stack and its white level."""
    h, w = size or (max(c.shape[0] for c in crops), max(c.shape[1] for c in crops))
    wide = any(c.dtype == np.uint16 for c in crops)
    if not wide:
        return np.stack([fit_to_size(c, h, w) for c in crops]), 255
    white = 4095 if max(int(c.max()) for c in crops if c.dtype == np.uint16) <= 4095 else 65535
    scaled = [
        c if c.dtype == np.uint16 else np.round(c * (white / 255)).astype(np.uint16) for c in crops
    ]
    return np.stack([fit_to_size(c, h, w) for c in scaled]), white


def _index_table(records: list[Record]) -> pd.DataFrame:
    rows = [
        {
            "label": r.label,
            "day": r.day,
            "condition": r.condition,
            "batch": r.batch,
            "source": r.source,
        }
        | r.extra
        for r in records
    ]
    return pd.DataFrame(rows)
