"""The datamodule composed from conf/data, as training will build it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nscfate.data.datamodule import CellDataModule
from nscfate.data.splits import split_digest

from .conftest import CONF


def _data_cfg(tmp_path, *overrides: str):
    """conf/data/<x> composed with the keys it interpolates (seed, paths, augmentation)."""
    primary = tmp_path / "primary"
    primary.mkdir(exist_ok=True)
    (primary / "cfg.yaml").write_text(
        "defaults:\n  - data: synthetic\n  - augmentation: light\n  - _self_\nseed: 0\n"
        f"paths:\n  data_dir: {tmp_path / 'data'}\nhydra:\n  searchpath: [file://{CONF}]\n"
    )
    with initialize_config_dir(config_dir=str(primary), version_base="1.3"):
        return compose("cfg", overrides=list(overrides))


def test_synthetic_config_generates_once_then_reuses(tmp_path):
    cfg = _data_cfg(tmp_path, "data.synthetic.cells_per_group=6", "data.num_workers=0")
    dm = instantiate(cfg.data)
    assert isinstance(dm, CellDataModule)
    dm.prepare_data()
    dm.setup("fit")
    store_dir = dm.store_path
    assert store_dir.parent == tmp_path / "data" and (store_dir / "dataset.json").is_file()
    mtime = (store_dir / "images.npy").stat().st_mtime_ns
    again = instantiate(cfg.data)
    again.prepare_data()
    again.setup("fit")
    assert (store_dir / "images.npy").stat().st_mtime_ns == mtime  # reused, not regenerated
    assert again.split_digest == dm.split_digest
    assert set(dm.independent_conditions) == {"NT3", "CNTF", "T3", "nanoparticle"}
    assert (store_dir / "splits" / f"{dm.split_digest[:16]}.csv").is_file()


def test_batches_are_normalised_float_with_rows(tiny_synth):
    dm = CellDataModule(str(tiny_synth.path), split={"holdout_conditions": ["NT3"]}, batch_size=16)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 1, 64, 64) and batch["image"].dtype == torch.float32
    assert set(batch["label"].tolist()) <= {0, 1, 2}
    rows = batch["row"].numpy()
    labels = tiny_synth.index.loc[rows, "label"].map(
        {"astrocyte": 0, "oligodendrocyte": 1, "neuron": 2}
    )
    assert np.array_equal(labels.to_numpy(), batch["label"].numpy())
    borders = batch["image"][:, 0, :2, :].flatten(1).median(dim=1).values
    assert borders.abs().max() < 0.2  # per-image normalisation puts the background at zero
    assert dm.split_digest == split_digest(tiny_synth.index, dm.split)
    assert len(dm.loader("indep:NT3").dataset) == (tiny_synth.index.condition == "NT3").sum()


def test_an_evaluation_pass_over_the_training_crops_reads_evaluation_batches(tiny_synth):
    """The OOD fit reads the training crops unaugmented, as evaluation reads crops: in evaluation
    batches (small on a CPU, where inference is fastest in cache-sized batches)."""
    dm = CellDataModule(str(tiny_synth.path), batch_size=16, eval_batch_size=5)
    dm.setup("fit")
    assert dm.loader("train", shuffle=True).batch_size == 16
    assert dm.loader("train", augmented=False).batch_size == 5
    assert dm.loader("val").batch_size == 5


def test_workers_and_every_normalisation(tiny_synth):
    for mode in ("per_image", "dataset", "none"):
        dm = CellDataModule(
            str(tiny_synth.path),
            normalize=mode,
            batch_size=8,
            num_workers=2,
            persistent_workers=True,
            augmentation=OmegaConf.load(CONF / "augmentation/strong.yaml"),
        )
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        assert torch.isfinite(batch["image"]).all()
        if mode == "dataset":
            assert dm.normalizer.mean is not None and 0 < dm.normalizer.mean < 1
        if mode == "none":
            assert float(batch["image"].min()) >= 0 and float(batch["image"].max()) <= 1.0001


def test_missing_store_and_unknown_split_are_named(tmp_path, tiny_synth):
    from nscfate.errors import NscfateError

    with pytest.raises(NscfateError, match="does not exist"):
        CellDataModule(str(tmp_path / "nope")).setup("fit")
    dm = CellDataModule(str(tiny_synth.path))
    dm.setup("fit")
    with pytest.raises(NscfateError, match="no split 'indep:X'"):
        dm.loader("indep:X")


def test_non_square_crops_are_padded_to_a_square_with_their_own_background(nonsquare_stores):
    from nscfate.data.imageio import background_level

    dm = CellDataModule(str(nonsquare_stores["45x30"]), normalize="none", batch_size=4)
    dm.setup()
    assert dm.store.meta["shape"][1:] == [45, 30] and dm.input_size == (45, 45)
    item = dm.datasets["test"][0]
    raw = dm.store.images[int(item["row"])].astype(np.float32) / 255
    image = item["image"][0].numpy()
    assert image.shape == (45, 45)
    np.testing.assert_allclose(image[:, 7:37], raw, atol=1e-6)  # the crop itself, untouched
    assert np.allclose(image[:, :7], background_level(raw), atol=1e-6)
    assert np.allclose(image[:, 37:], background_level(raw), atol=1e-6)
