"""Write synthetic cells as a lab's IDEAS/ImageStream export: non-square 24-bit BMPs, one per cell.

A lab's own export is what nscfate must take out of the box, so tests and benchmarks build one the
way the instrument writes it: ``<a|o|n>_<day>d<replicate>_<object>_Ch1.ome.bmp``, 24-bit BMP with
three equal channels, a fixed width and a height that varies from cell to cell (the third-party
reuse of the paper's data has 60 px wide crops, 37-57 px high). Each synthetic batch becomes one
culture (replicate) of its class and day.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from nscfate.data.schema import CONTROL
from nscfate.data.synthetic import SynthSettings, generate
from nscfate.errors import NscfateError

#: Class letters of IDEAS export names.
LETTER = {"astrocyte": "a", "oligodendrocyte": "o", "neuron": "n"}


def write_ideas_export(
    images: np.ndarray,
    index: pd.DataFrame,
    out: Path,
    width: int = 60,
    heights: tuple[int, int] = (37, 57),
    seed: int = 0,
) -> list[Path]:
    """Write the control cells of a synthetic store as an IDEAS export under ``out``.

    Every crop is centre-cut to ``width`` x a height drawn uniformly from ``heights`` (inclusive)
    and saved as a 24-bit grey BMP. Returns the files written.
    """
    n, size = images.shape[0], images.shape[1]
    if images.dtype != np.uint8 or width > size or heights[1] > size or heights[0] > heights[1]:
        raise NscfateError(
            f"an IDEAS export needs 8-bit crops at least {heights[1]}x{width}, got "
            f"{images.dtype} {size}x{images.shape[2]}"
        )
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    control = index["condition"].to_numpy() == CONTROL
    replicate = _replicates(index)
    files = []
    for row in np.flatnonzero(control):
        cell = index.iloc[row]
        h = int(rng.integers(heights[0], heights[1] + 1))
        top, left = (size - h) // 2, (images.shape[2] - width) // 2
        crop = images[row, top : top + h, left : left + width]
        name = f"{LETTER[cell['label']]}_{cell['day']:g}d{replicate[row]}_{row}_Ch1.ome.bmp"
        Image.fromarray(np.repeat(crop[..., None], 3, axis=-1), mode="RGB").save(out / name)
        files.append(out / name)
    if not files:
        raise NscfateError(f"no control cells among the {n} given: nothing to export")
    return files


def synthetic_ideas_export(
    out: Path,
    cells_per_group: int = 111,
    size: int = 60,
    width: int = 60,
    heights: tuple[int, int] = (37, 57),
    seed: int = 1,
) -> list[Path]:
    """A lab-sized IDEAS export of synthetic cells: days 1/3/7, four cultures per class and day,
    ``cells_per_group`` cells per class and day (111 gives 999 cells), crops ``heights`` x ``width``
    cut from ``size`` px renders."""
    settings = SynthSettings(
        seed=seed,
        size=size,
        cells_per_group=cells_per_group,
        days=(1, 3, 7),
        batches_per_group=4,
        conditions=(),
    )
    images, index = generate(settings)
    return write_ideas_export(images, index, out, width=width, heights=heights, seed=seed)


def _replicates(index: pd.DataFrame) -> np.ndarray:
    """Replicate number (1, 2, ...) of each cell's batch within its class and day."""
    first = index.drop_duplicates("batch")
    number = first.groupby(["label", "day"]).cumcount() + 1
    return index["batch"].map(dict(zip(first["batch"], number, strict=True))).to_numpy()
