"""The dataset store: round trip, digest, atomic writes, readable errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from nscfate.data.store import open_store, write_store
from nscfate.errors import NscfateError


def _cells(n: int = 6, dtype=np.uint8) -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, np.iinfo(dtype).max, size=(n, 8, 10), dtype=dtype)
    labels = ["astrocyte", "oligodendrocyte", "neuron"] * (n // 3)
    index = pd.DataFrame(
        {
            "label": labels,
            "day": [1.0, 3.0] * (n // 2),
            "condition": "control",
            "batch": [f"b{i % 2}" for i in range(n)],
            "source": [f"c{i}.png" for i in range(n)],
            "lat_size": np.linspace(0, 1, n),
        }
    )
    return images, index


def test_round_trip_keeps_images_index_and_meta(tmp_path):
    images, index = _cells()
    store = write_store(tmp_path / "s", images, index, {"made_by": "test"})
    again = open_store(tmp_path / "s")
    assert np.array_equal(again.images, images)
    assert isinstance(again.images, np.memmap)
    pd.testing.assert_frame_equal(again.index, index, check_dtype=False)
    meta = json.loads((tmp_path / "s" / "dataset.json").read_text())
    assert meta["shape"] == [6, 8, 10] and meta["dtype"] == "uint8" and meta["white_level"] == 255
    assert meta["classes"] == {"astrocyte": 2, "oligodendrocyte": 2, "neuron": 2}
    assert meta["days"] == [1, 3] and meta["conditions"] == {"control": 6}
    assert meta["provenance"] == {"made_by": "test"} and store.digest == meta["digest"]


def test_digest_depends_on_content_only(tmp_path):
    images, index = _cells()
    a = write_store(tmp_path / "a", images, index, {"run": 1})
    b = write_store(tmp_path / "b", images, index, {"run": 2})
    assert a.digest == b.digest
    images[0, 0, 0] ^= 1
    assert write_store(tmp_path / "c", images, index, {}).digest != a.digest
    index.loc[0, "batch"] = "other"
    assert write_store(tmp_path / "d", images ^ 0, index, {}).digest not in (a.digest,)


def test_uint16_store_keeps_its_white_level(tmp_path):
    images, index = _cells(dtype=np.uint16)
    store = write_store(tmp_path / "s", images, index, {}, white_level=4095)
    assert store.white_level == 4095 and store.images.dtype == np.uint16


def test_existing_output_is_refused_then_replaced_with_overwrite(tmp_path):
    images, index = _cells()
    write_store(tmp_path / "s", images, index, {})
    with pytest.raises(NscfateError, match="already exists"):
        write_store(tmp_path / "s", images, index, {})
    write_store(tmp_path / "s", images[:3], index[:3], {}, overwrite=True)
    assert len(open_store(tmp_path / "s")) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    images, index = _cells()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", explode)
    with pytest.raises(OSError):
        write_store(tmp_path / "s", images, index, {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("images", "column", "message"),
    [
        (np.zeros((6, 8), np.uint8), None, "N x H x W"),
        (np.zeros((6, 8, 8), np.float32), None, "uint8 or uint16"),
        (np.zeros((6, 8, 8), np.uint8), "batch", "lacks columns"),
        (np.zeros((5, 8, 8), np.uint8), None, "5 images"),
    ],
)
def test_bad_content_is_refused_by_name(tmp_path, images, column, message):
    _, index = _cells()
    if column:
        index = index.drop(columns=[column])
    with pytest.raises(NscfateError, match=message):
        write_store(tmp_path / "s", images, index, {})
    assert not (tmp_path / "s").exists()


def test_open_names_what_is_missing(tmp_path):
    with pytest.raises(NscfateError, match="does not exist"):
        open_store(tmp_path / "nope")
    images, index = _cells()
    write_store(tmp_path / "s", images, index, {})
    (tmp_path / "s" / "index.csv").unlink()
    with pytest.raises(NscfateError, match="index.csv is missing"):
        open_store(tmp_path / "s")
