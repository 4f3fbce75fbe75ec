"""The pictures every run logs: the Grad-CAM gallery (one composited image) and the data preview
(drawn once per store)."""

from __future__ import annotations

import shutil

import matplotlib
import numpy as np
import pandas as pd
import pytest

from nscfate.data import preview
from nscfate.data.schema import CLASSES
from nscfate.data.store import open_store
from nscfate.evaluation.cam import GAP, HEAT_ALPHA, TITLE_ROOM, gallery_figure, overlay


def test_overlay_is_the_crop_stretched_under_the_jet_map() -> None:
    rng = np.random.default_rng(0)
    image, heat = rng.random((8, 8)), rng.random((8, 8))
    lo, hi = np.percentile(image, [1, 99])
    grey = np.clip((image - lo) / (hi - lo), 0, 1)
    expected = (1 - HEAT_ALPHA) * grey[..., None] + HEAT_ALPHA * matplotlib.colormaps["jet"](heat)[
        ..., :3
    ]
    np.testing.assert_allclose(overlay(image, heat), expected)


@pytest.mark.parametrize(("h", "w"), [(16, 16), (45, 30)])  # square, and a lab's 45x30 crops
def test_gallery_places_every_crop_and_marks_wrong_fates_red(h: int, w: int) -> None:
    labels = np.repeat(CLASSES, 4)  # rows in the order of CLASSES
    predicted = labels.copy()
    predicted[[1, 6, 9]] = CLASSES[0]  # right by chance in row 0, wrong in rows 1 and 2
    cells = pd.DataFrame({"label": labels, "day": np.tile([1, 3, 5, 7], 3), "predicted": predicted})
    rng = np.random.default_rng(1)
    images, maps = rng.random((12, h, w)), rng.random((12, h, w))
    expected_red = [
        f"d{d} -> {p[:5]}" for d, p, t in zip(cells.day, predicted, labels, strict=True) if p != t
    ]
    assert len(expected_red) == 2
    fig = gallery_figure(images, maps, cells)
    (ax,) = fig.axes
    (sheet,) = ax.get_images()
    data = np.asarray(sheet.get_array())
    assert data.shape == (3 * (h + GAP + TITLE_ROOM), 4 * (w + GAP), 3)
    for i in range(12):  # tile of cell i: its own overlay at its row (fate) and column (day)
        r, c = divmod(i, 4)
        top, left = r * (h + GAP + TITLE_ROOM) + TITLE_ROOM, c * (w + GAP)
        np.testing.assert_allclose(
            data[top : top + h, left : left + w], overlay(images[i], maps[i])
        )
    titles = [t for t in ax.texts if "->" in t.get_text()]
    red = [t.get_text() for t in titles if t.get_color() == "red"]
    assert len(titles) == 12 and sorted(red) == sorted(expected_red)
    assert {t.get_text() for t in ax.texts if "->" not in t.get_text()} == set(CLASSES)
    matplotlib.pyplot.close(fig)


def test_the_data_preview_is_drawn_once_per_store(tiny_synth, tmp_path, monkeypatch) -> None:
    store = open_store(shutil.copytree(tiny_synth.path, tmp_path / "store"))
    first = preview.cached_contact_sheet(store, tmp_path / "run1" / "data_preview.png")
    kept = store.path / preview.PREVIEW_DIR / f"{store.digest[:16]}.png"
    assert kept.read_bytes() == first.read_bytes()

    def drawn_again(*args, **kwargs):
        raise AssertionError("the sheet was drawn again")

    monkeypatch.setattr(preview, "contact_sheet", drawn_again)
    second = preview.cached_contact_sheet(store, tmp_path / "run2" / "data_preview.png")
    assert second.read_bytes() == first.read_bytes()


def test_a_store_that_cannot_keep_the_preview_still_gets_one(tiny_synth, tmp_path) -> None:
    store = open_store(shutil.copytree(tiny_synth.path, tmp_path / "store"))
    (store.path / preview.PREVIEW_DIR).write_text("not a folder")  # the copy cannot be kept
    out = preview.cached_contact_sheet(store, tmp_path / "data_preview.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("store/.*tmp*"))  # nothing half-written left behind


def test_a_changed_store_gets_a_new_preview(tiny_synth, tmp_path) -> None:
    store = open_store(shutil.copytree(tiny_synth.path, tmp_path / "store"))
    preview.cached_contact_sheet(store, tmp_path / "a.png")
    store.meta["digest"] = "f" * 64  # what re-ingesting different content would record
    preview.cached_contact_sheet(store, tmp_path / "b.png")
    assert len(list((store.path / preview.PREVIEW_DIR).glob("*.png"))) == 2
