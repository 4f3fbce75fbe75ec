"""Bring-your-own data: folder trees, CSV manifests, IDEAS exports, sizes, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from nscfate.data.imageio import fit_to_size, read_grey
from nscfate.data.ingest import detect_format, ingest
from nscfate.errors import NscfateError


def _png(path: Path, value: int = 120, size: tuple[int, int] = (20, 16), dark: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full(size, value, np.uint8)
    a[size[0] // 2 - 2 : size[0] // 2 + 2, size[1] // 2 - 2 : size[1] // 2 + 2] = dark
    Image.fromarray(a).save(path)
    return path


def test_real_samples_ingest_as_folder_tree(sample_tree, tmp_path):
    store, report = ingest(sample_tree, tmp_path / "store", fmt="folder")
    assert len(store) == 6 and report.skipped == []
    assert store.meta["shape"] == [6, 45, 30] and store.meta["dtype"] == "uint8"
    assert store.meta["classes"] == {"astrocyte": 2, "oligodendrocyte": 2, "neuron": 2}
    # pixels are the real crops, untouched
    first = store.index.index[store.index["source"] == "astrocyte/astrocyte_0.png"][0]
    assert np.array_equal(
        store.images[first], np.asarray(Image.open(sample_tree / "astrocyte/astrocyte_0.png"))
    )


def test_real_samples_ingest_from_manifest(sample_pngs, tmp_path):
    lines = ["path,label,day,condition,batch"]
    for i, f in enumerate(sample_pngs):
        lines.append(f"{f},{f.stem.rsplit('_', 1)[0]},1,control,plate{i % 2}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    store, _ = ingest(tmp_path / "m.csv", tmp_path / "store")
    assert len(store) == 6 and store.meta["days"] == [1]
    assert set(store.index["batch"]) == {"plate0", "plate1"}


def test_folder_levels_give_day_condition_and_batch(tmp_path):
    src = tmp_path / "src"
    _png(src / "neuron/day1/NT3/well_a/x.png")
    _png(src / "neuron/d3/y.png")
    _png(src / "astro/1/control/z.png")
    store, _ = ingest(src, tmp_path / "store")
    idx = store.index.set_index("source")
    assert idx.loc[
        "neuron/day1/NT3/well_a/x.png", ["label", "day", "condition", "batch"]
    ].tolist() == ["neuron", 1.0, "NT3", "neuron/day1/NT3/well_a"]
    assert idx.loc["neuron/d3/y.png", ["day", "condition"]].tolist() == [3.0, "control"]
    assert idx.loc["astro/1/control/z.png", "label"] == "astrocyte"


def test_manifest_keeps_extra_columns_and_relative_paths(tmp_path):
    _png(tmp_path / "img/a.png")
    _png(tmp_path / "img/b.png")
    (tmp_path / "m.csv").write_text(
        "path,label,well,day\nimg/a.png,neuron,A1,2\nimg/b.png,oligo,B2,day5\n"
    )
    store, _ = ingest(tmp_path / "m.csv", tmp_path / "store", fmt="csv")
    assert store.index["well"].tolist() == ["A1", "B2"]
    assert store.index["day"].tolist() == [2.0, 5.0]
    assert store.index["condition"].tolist() == ["control", "control"]
    assert store.index["batch"].tolist() == ["img", "img"]


def test_ideas_export_8bit_bmp_and_16bit_tiff(tmp_path):
    src = tmp_path / "export"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a_1d1_10_Ch1.ome.bmp", "a_1d1_11_Ch1.ome.bmp", "o_3d2_5_Ch1.ome.bmp"):
        Image.fromarray(rng.integers(90, 110, (30, 24), dtype=np.uint8)).save(src / name)
    rgb = np.repeat(rng.integers(90, 110, (30, 24, 1), dtype=np.uint8), 3, axis=2)
    Image.fromarray(rgb).save(src / "n_1d1_7_Ch1.ome.bmp")  # IDEAS sometimes writes grey as RGB
    Image.fromarray(rng.integers(0, 255, (30, 24), dtype=np.uint8)).save(
        src / "n_1d1_7_Ch9.ome.bmp"
    )
    assert detect_format(src) == "ideas"
    store, _ = ingest(src, tmp_path / "s8", fmt="ideas")
    assert len(store) == 4  # the Ch9 file is another channel, not bright field
    row = store.index.set_index("source").loc["a_1d1_10_Ch1.ome.bmp"]
    assert (row["label"], row["day"], row["batch"], row["object_id"]) == (
        "astrocyte",
        1.0,
        "a_1d1",
        10,
    )
    assert store.index.set_index("source").loc["o_3d2_5_Ch1.ome.bmp", "batch"] == "o_3d2"

    tif = tmp_path / "export16"
    tif.mkdir()
    for name in ("a_1d1_1_Ch1.ome.tif", "n_1d1_2_Ch1.ome.tif"):
        tifffile.imwrite(tif / name, rng.integers(100, 4000, (30, 24), dtype=np.uint16))
    store16, _ = ingest(tif, tmp_path / "s16", fmt="ideas")
    assert store16.meta["dtype"] == "uint16" and store16.white_level == 4095


def test_sizes_are_padded_with_own_background_or_cropped(tmp_path):
    crop = np.full((10, 6), 77, np.uint8)
    crop[4:6, 2:4] = 10
    padded = fit_to_size(crop, 14, 12)
    assert padded.shape == (14, 12) and padded[0, 0] == 77 and padded[7, 6] == 10
    floaty = fit_to_size(np.full((4, 4), 0.25, np.float32), 6, 6)
    assert floaty.dtype == np.float32 and np.allclose(floaty, 0.25)
    big = np.arange(20 * 20, dtype=np.uint16).reshape(20, 20)
    cut = fit_to_size(big, 10, 10)
    assert np.array_equal(cut, big[5:15, 5:15])

    src = tmp_path / "src"
    _png(src / "neuron/a.png", value=200, size=(30, 20))
    _png(src / "astrocyte/b.png", value=60, size=(50, 40))
    store, _ = ingest(src, tmp_path / "store", size=(40, 40))
    small = store.images[store.index.index[store.index["label"] == "neuron"][0]]
    assert small.shape == (40, 40) and small[0, 0] == 200  # own background, not black


def test_grey_reader_rejects_colour_and_names_the_file(tmp_path):
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(NscfateError, match=r"colour\.png has 3 distinct channels"):
        read_grey(tmp_path / "colour.png")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "does not exist"),
        ("empty", "no images found"),
        ("corrupt", r"cannot read image .*broken\.png"),
        ("unknown_class", "unknown class name 'glia'"),
        ("single_class", "only one class"),
        ("loose_file", "not inside a <class>/ folder"),
    ],
)
def test_bad_folder_sources_fail_cleanly(tmp_path, sample_tree, setup, message):
    src = {"missing": tmp_path / "nope", "empty": tmp_path / "empty"}.get(setup, sample_tree)
    if setup == "empty":
        (src / "neuron").mkdir(parents=True)
        (src / "notes.txt").write_text("no crops here")
    elif setup == "corrupt":
        (src / "neuron" / "broken.png").write_bytes(b"\x89PNG not really")
    elif setup == "unknown_class":
        _png(src / "glia" / "g.png")
    elif setup == "single_class":
        shutil.rmtree(src / "astrocyte")
        shutil.rmtree(src / "oligodendrocyte")
    elif setup == "loose_file":
        _png(src / "stray.png")
    with pytest.raises(NscfateError, match=message):
        ingest(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]
    assert leftovers == []  # no half store (the writer's lock file .out.lock may stay)


def test_skip_bad_skips_unreadable_files_and_counts_them(sample_tree, tmp_path):
    (sample_tree / "neuron" / "broken.png").write_bytes(b"junk")
    (sample_tree / "astrocyte" / "truncated.bmp").write_bytes(b"BM\x00\x00")
    store, report = ingest(sample_tree, tmp_path / "out", skip_bad=True)
    assert len(store) == 6 and len(report.skipped) == 2
    assert {Path(p).name for p, _ in report.skipped} == {"broken.png", "truncated.bmp"}


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("file,label\na.png,neuron\n", "lacks column.*path"),
        ("path,day\na.png,1\n", "lacks column.*label"),
        ("path,label\nimg/a.png,glia\nimg/b.png,neuron\n", "line 2"),
        ("path,label,day\nimg/a.png,neuron,soon\nimg/b.png,astro,1\n", "line 2: day 'soon'"),
        ("path,label\nimg/a.png,neuron\nimg/missing.png,astro\n", r"missing\.png does not exist"),
        ("path,label\n", "no images found"),
    ],
)
def test_bad_manifests_fail_cleanly(tmp_path, manifest, message):
    _png(tmp_path / "img/a.png")
    _png(tmp_path / "img/b.png")
    (tmp_path / "m.csv").write_text(manifest)
    with pytest.raises(NscfateError, match=message):
        ingest(tmp_path / "m.csv", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_ideas_rejects_foreign_names(tmp_path):
    _png(tmp_path / "src" / "a_1d1_1_Ch1.ome.bmp")
    _png(tmp_path / "src" / "holiday.png")
    with pytest.raises(NscfateError, match=r"holiday\.png: not an IDEAS export name"):
        ingest(tmp_path / "src", tmp_path / "out", fmt="ideas")
