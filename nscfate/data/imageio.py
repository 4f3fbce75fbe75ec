"""Reading grey crops from disk and fitting them to one fixed size."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nscfate.data.normalize import border_median
from nscfate.errors import NscfateError

#: File endings nscfate reads as crops.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")


def is_image(path: Path) -> bool:
    """True for files with an image ending nscfate can read."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def read_grey(path: Path) -> np.ndarray:
    """Read one crop as a 2-D uint8 or uint16 array.

    8-bit BMP/PNG/JPEG, 16-bit PNG and 8/16-bit TIFF are read as they are; an RGB file whose three
    channels are equal (as IDEAS writes some BMPs) is read as grey. Anything else is an error that
    names the file.
    """
    try:
        arr = _read_tiff(path) if path.suffix.lower() in (".tif", ".tiff") else _read_pil(path)
    except NscfateError:
        raise
    except Exception as err:  # corrupt or truncated files raise many different types
        detail = str(err).replace(str(path), "").strip(" :'\"") or "unreadable"
        raise NscfateError(f"cannot read image {path}: {type(err).__name__}: {detail}") from err
    return _as_grey(arr, path)


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L"):
            return np.asarray(im, dtype=np.uint16)
        if im.mode == "I":
            return _int_to_uint16(np.asarray(im), path)
        if im.mode in ("P", "PA", "LA", "RGBA"):
            im = im.convert("RGB") if im.mode != "LA" else im.convert("L")
        return np.asarray(im)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    arr = tifffile.imread(path)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channels-first TIFF
    return arr


def _int_to_uint16(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.min() < 0 or arr.max() > 65535:
        raise NscfateError(f"cannot read image {path}: values outside 0..65535")
    return arr.astype(np.uint16)


def _as_grey(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3:
        channels = arr.shape[-1]
        colour = arr[..., :3]
        if channels in (3, 4) and (colour == colour[..., :1]).all():
            arr = colour[..., 0]
        else:
            raise NscfateError(
                f"image {path} has {channels} distinct channels: expected a single-channel (grey) crop"
            )
    if arr.ndim != 2 or min(arr.shape) < 4:
        raise NscfateError(
            f"image {path} has shape {arr.shape}: expected a 2-D grey crop of at least 4x4"
        )
    if arr.dtype == np.uint8 or arr.dtype == np.uint16:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.floating) and arr.min() >= 0 and arr.max() <= 1:
        return np.round(arr * 65535).astype(np.uint16)
    if np.issubdtype(arr.dtype, np.integer):
        return _int_to_uint16(arr, path)
    raise NscfateError(f"image {path} has pixel type {arr.dtype}: expected 8- or 16-bit grey")


def background_level(crop: np.ndarray) -> float:
    """The crop's own background: the median of its border frame, as per-image normalisation
    measures it (``nscfate.data.normalize.border_median``)."""
    return float(border_median(crop))


def fit_to_size(crop: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop or centre-pad ``crop`` to ``height`` x ``width``.

    Padding uses the crop's own background level, so a small crop sits on a flat field of its own
    grey rather than on black (which would give the model a trivial size cue).
    """
    level = background_level(crop)
    fill = round(level) if np.issubdtype(crop.dtype, np.integer) else level
    out = np.full((height, width), fill, dtype=crop.dtype)
    h, w = crop.shape
    sy, dy = _centre(h, height)
    sx, dx = _centre(w, width)
    ch, cw = min(h, height), min(w, width)
    out[dy : dy + ch, dx : dx + cw] = crop[sy : sy + ch, sx : sx + cw]
    return out


def _centre(src: int, dst: int) -> tuple[int, int]:
    """(offset into the source, offset into the destination) that centres one in the other."""
    return (max(src - dst, 0) // 2, max(dst - src, 0) // 2)


def parse_size(text: str | int | None) -> tuple[int, int] | None:
    """Parse ``64`` or ``"45x30"`` (height x width) into (height, width); None stays None."""
    if text is None:
        return None
    try:
        if isinstance(text, int):
            h = w = text
        elif "x" in str(text).lower():
            h, w = (int(v) for v in str(text).lower().split("x"))
        else:
            h = w = int(text)
    except ValueError:
        raise NscfateError(f"--size {text!r}: expected N or HxW, e.g. 64 or 45x30") from None
    if h < 8 or w < 8:
        raise NscfateError(f"--size {text!r}: crops must be at least 8x8")
    return h, w
