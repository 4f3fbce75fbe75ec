"""Contact sheets: a few crops per class (rows) and day (columns), to look at a dataset."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from nscfate.data.schema import CLASSES, CONTROL
from nscfate.data.store import DatasetStore
from nscfate.files import atomic_write


def _day_key(day: float) -> str:
    return "day ?" if pd.isna(day) else f"day {day:g}"


def pick_cells(index: pd.DataFrame, per_cell: int, seed: int) -> dict[tuple[str, str], list[int]]:
    """Up to ``per_cell`` random rows for every (class, day) of the labelled training cells."""
    cells = index[index["label"] != ""]
    if (cells["condition"] == CONTROL).any():
        cells = cells[cells["condition"] == CONTROL]
    rng = np.random.default_rng(seed)
    chosen = {}
    for (label, day), group in cells.groupby([cells["label"], cells["day"].map(_day_key)]):
        rows = group.index.to_numpy()
        chosen[(label, day)] = sorted(
            rng.choice(rows, size=min(per_cell, len(rows)), replace=False)
        )
    return chosen


def mosaic(crops: np.ndarray, fill: float) -> np.ndarray:
    """Tile crops (k x H x W) into a near-square grid with one-pixel gaps."""
    k, h, w = crops.shape
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), fill, dtype=np.float32)
    for i, crop in enumerate(crops):
        r, c = divmod(i, cols)
        out[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = crop
    return out


def contact_sheet(
    store: DatasetStore, out: str | os.PathLike, per_cell: int = 4, seed: int = 0
) -> Path:
    """Write a PNG contact sheet of ``store`` (rows = classes, columns = days) to ``out``.

    One intensity range (0.5–99.5 % of the shown pixels) is used for the whole sheet, so
    differences of background level between batches stay visible.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = pick_cells(store.index, per_cell, seed)
    labels = [c for c in CLASSES if any(k[0] == c for k in chosen)]
    days = sorted(
        {k[1] for k in chosen}, key=lambda s: (s == "day ?", float(s[4:]) if s != "day ?" else 0)
    )
    images = store.images
    shown = np.concatenate([images[rows].astype(np.float32).ravel() for rows in chosen.values()])
    lo, hi = np.percentile(shown, [0.5, 99.5])
    fig, axes = plt.subplots(
        len(labels),
        len(days),
        figsize=(1.9 * len(days) + 1, 1.9 * len(labels) + 0.6),
        squeeze=False,
    )
    for r, label in enumerate(labels):
        for c, day in enumerate(days):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            rows = chosen.get((label, day))
            if rows:
                ax.imshow(
                    mosaic(images[rows].astype(np.float32), fill=hi), cmap="gray", vmin=lo, vmax=hi
                )
            if r == 0:
                ax.set_title(day, fontsize=10)
            if c == 0:
                ax.set_ylabel(label, fontsize=10)
    fig.suptitle(
        f"{store.path.name}: {len(store)} cells, {store.meta['shape'][1]}x{store.meta['shape'][2]} "
        f"{store.meta['dtype']}",
        fontsize=10,
    )
    fig.tight_layout()
    out = Path(out)
    try:
        with atomic_write(out) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return out


#: Where a store keeps the contact sheets drawn of it, one per content digest.
PREVIEW_DIR = "previews"


def cached_contact_sheet(store: DatasetStore, out: str | os.PathLike) -> Path:
    """:func:`contact_sheet` of ``store`` at ``out``, drawn once per store content: the first call
    also keeps a copy in ``<store>/previews/<digest>.png`` and later calls (every run on the same
    store) copy it instead of drawing again. A store that cannot be written is drawn each time."""
    kept = store.path / PREVIEW_DIR / f"{store.digest[:16]}.png"
    out = Path(out)
    if kept.is_file():
        with atomic_write(out) as tmp:
            shutil.copyfile(kept, tmp)
        return out
    contact_sheet(store, out)
    try:
        with atomic_write(kept) as tmp:
            shutil.copyfile(out, tmp)
    except OSError:  # a read-only store: the sheet is drawn per run, nothing else changes
        pass
    return out
