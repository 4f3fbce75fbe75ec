"""The batch loader: one store read per batch, normalisation and geometric augmentation in torch on
whatever device holds the batch, with the values and distributions of the per-crop path it replaced."""

from __future__ import annotations

import os

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from benchmarks.loader_throughput import per_image_as_it_was
from nscfate.augment import batched, build_augmentation
from nscfate.augment.batched import batched_policy
from nscfate.data.datamodule import BatchTransform, CellDataModule
from nscfate.data.normalize import Normalizer, per_image, per_image_torch

from .conftest import CONF


def _crops(n: int, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).integers(0, 256, (n, *shape)) / 255).astype(np.float32)


@pytest.mark.parametrize("shape", [(64, 64), (45, 30), (57, 60), (8, 8)])
def test_batched_normalisation_gives_the_per_crop_values(shape):
    crops = _crops(9, shape)
    expected = np.stack([per_image_as_it_was(c) for c in crops])
    np.testing.assert_allclose(
        per_image_torch(torch.from_numpy(crops)).numpy(), expected, atol=1e-5
    )
    np.testing.assert_allclose(per_image(crops), expected, atol=1e-5)  # the numpy face: same code
    flat = per_image_torch(torch.full((2, 16, 16), 0.5))
    assert torch.isfinite(flat).all() and flat.abs().max() == 0


def _affine(border: int) -> A.Affine:
    return A.Affine(
        translate_percent={"x": (0.07, 0.07), "y": (-0.04, -0.04)},
        scale={"x": (1.08, 1.08), "y": (0.93, 0.93)},
        rotate=(17, 17),
        shear={"x": (5, 5), "y": (-3, -3)},
        border_mode=border,
        p=1.0,
    )


@pytest.fixture(params=["cpu", "batched"])
def warp_path(request, monkeypatch):
    """Both warps: crop by crop with cv2 (a CPU's) and batched torch (a GPU's, run here on the CPU)."""
    if request.param == "batched":
        monkeypatch.setattr(
            batched, "warp", lambda x, fw, b, f: batched.warp_batched(x, torch.linalg.inv(fw), b, f)
        )
    return request.param


@pytest.mark.parametrize("shape", [(64, 64), (45, 30), (57, 60)])  # the paper's and a lab's crops
@pytest.mark.parametrize("border", [cv2.BORDER_REFLECT, cv2.BORDER_REPLICATE, cv2.BORDER_CONSTANT])
def test_batched_affine_warps_like_albumentations(border, shape, warp_path):
    y, x = np.mgrid[: shape[0], : shape[1]]
    img = (0.5 + 0.3 * np.sin(x / 5.0) * np.cos(y / 7.0) + 0.1 * x / shape[1]).astype(np.float32)
    expected = A.Compose([_affine(border)], seed=0)(image=img)["image"]
    twin = batched_policy(A.Compose([_affine(border)]))
    out = twin(torch.from_numpy(img)[None].repeat(2, 1, 1), torch.Generator().manual_seed(0))
    np.testing.assert_allclose(out.numpy(), np.stack([expected] * 2), atol=1e-4)


def test_batched_flips_and_quarter_turns_are_exact(warp_path):
    """One resampling for the whole chain still lands flips and quarter turns on pixel centres:
    every output is exactly (bit for bit) one of the eight symmetries of the crop, and all eight
    occur."""
    img = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    twin = batched_policy(
        A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)])
    )
    out = twin(torch.from_numpy(img)[None].repeat(400, 1, 1), torch.Generator().manual_seed(0))
    symmetries = [np.rot90(m, k) for m in (img, img[:, ::-1]) for k in range(4)]
    which = [[i for i, sym in enumerate(symmetries) if np.array_equal(o, sym)] for o in out.numpy()]
    assert all(len(w) == 1 for w in which)
    assert {w[0] for w in which} == set(range(8))
    _, resampled = twin.apply(torch.from_numpy(img)[None].repeat(8, 1, 1), torch.Generator())
    assert not resampled.any()  # pixels only reordered: normalisation statistics unchanged


def test_kept_normalisation_statistics_give_the_values_found_afresh():
    """A crop's statistics are found once and kept; a batch normalised with kept statistics equals,
    bit for bit, the same batch with every statistic found again: flipped and turned crops reuse
    them, crops the Affine resampled get their own."""
    crops = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (64, 32, 32), np.uint8))
    light = OmegaConf.load(CONF / "augmentation" / "light.yaml")
    transform = BatchTransform(
        255, Normalizer("per_image"), batched_policy(build_augmentation(light))
    )
    known = torch.full((64, 2), float("nan"))
    transform(crops, torch.Generator().manual_seed(3), known)  # an epoch: every statistic found
    assert not known.isnan().any()
    kept = known.clone()
    again = transform(crops, torch.Generator().manual_seed(5), known)
    afresh = transform(crops, torch.Generator().manual_seed(5))
    assert torch.equal(again, afresh)
    assert torch.equal(known, kept)  # a resampled crop's statistics are not kept for the next
    _, resampled = transform.augment.apply(crops.float(), torch.Generator().manual_seed(5))
    assert 10 < int(resampled.sum()) < 54  # both kinds of crop were in the batch (Affine p=0.5)
    plain = BatchTransform(255, Normalizer("per_image"))
    assert torch.equal(plain(crops, None, known.clone()), plain(crops, None))


def test_policies_without_a_batched_twin_stay_per_crop():
    strong = OmegaConf.load(CONF / "augmentation" / "strong.yaml")
    assert batched_policy(build_augmentation(strong)) is None  # blur, defocus, noise
    light = OmegaConf.load(CONF / "augmentation" / "light.yaml")
    assert batched_policy(build_augmentation(light)).names == [
        "HorizontalFlip",
        "VerticalFlip",
        "RandomRotate90",
        "Affine",
    ]
    wrap = A.Compose([A.Affine(rotate=(-5, 5), border_mode=cv2.BORDER_WRAP)])
    assert batched_policy(wrap) is None  # an option the twin cannot follow


def test_the_light_policy_draws_the_same_distribution_in_batches():
    """Pixel means and spreads of 3,000 augmented copies of one asymmetric crop, per-crop
    (albumentations) against batched: the same within sampling error."""
    y, x = np.mgrid[:32, :32]
    img = (np.exp(-((x - 9) ** 2 + (y - 12) ** 2) / 30) + 0.3 * (x > 20)).astype(np.float32)
    light = OmegaConf.load(CONF / "augmentation" / "light.yaml")
    per_crop = build_augmentation(light, seed=1)
    n = 3000
    a = np.stack([per_crop(image=img)["image"] for _ in range(n)])
    twin = batched_policy(build_augmentation(light))
    b = twin(torch.from_numpy(img)[None].repeat(n, 1, 1), torch.Generator().manual_seed(2)).numpy()
    se = a.std(0) / np.sqrt(n)
    assert np.abs(a.mean(0) - b.mean(0)).max() < 5 * se.max()
    assert np.abs(a.std(0) - b.std(0)).max() < 0.03
    # Untouched: the flips and quarter turns compose to the identity (1 in 8) and Affine skips
    # (1 in 2). Per-crop draws with one seed for all transforms (the albumentations default) made
    # both flips fire together and this 1 in 8.
    for draws in (a, b):
        untouched = np.abs(draws - img).reshape(n, -1).max(1) < 1e-6
        assert abs(untouched.mean() - 1 / 16) < 0.015


def _datamodule(store, **kw) -> CellDataModule:
    light = OmegaConf.to_container(OmegaConf.load(CONF / "augmentation" / "light.yaml"))
    dm = CellDataModule(str(store.path), augmentation=light, batch_size=8, **kw)
    dm.setup("fit")
    return dm


def test_device_batches_arrive_raw_and_finish_like_worker_batches(tiny_synth):
    workers = _datamodule(tiny_synth)
    device = _datamodule(tiny_synth, transform_on="device")
    done = next(iter(workers.loader("val")))
    raw = next(iter(device.loader("val", on_device=True)))
    assert raw["image"].dtype == torch.uint8 and raw["image"].shape == (8, 64, 64)
    finished = device.on_after_batch_transfer(raw, 0)
    assert finished["image"].shape == (8, 1, 64, 64)
    torch.testing.assert_close(finished["image"], done["image"], atol=1e-6, rtol=0)
    assert torch.equal(finished["row"], done["row"])
    # a finished batch passes the hook untouched
    assert device.on_after_batch_transfer(done, 0)["image"] is done["image"]


def test_normalisation_runs_where_transform_on_says(tiny_synth, monkeypatch):
    """``workers``: inside the loader's worker processes; ``device``: in the training process, on
    the device of the batch (the module's: Lightning moves the batch before the hook)."""
    seen: list[tuple[int, str]] = []
    original = Normalizer.torch

    def spy(self, x):
        seen.append((os.getpid(), x.device.type))
        return original(self, x)

    monkeypatch.setattr(Normalizer, "torch", spy)
    import lightning as L

    from nscfate.models import create_model
    from nscfate.training.module import FateClassifier

    for where in ("workers", "device"):
        seen.clear()
        dm = _datamodule(tiny_synth, transform_on=where, num_workers=1, persistent_workers=False)
        module = FateClassifier(
            create_model("small_cnn", width=8),
            optimizer=lambda params: torch.optim.SGD(params, lr=0.01),
        )
        L.Trainer(
            max_steps=2,
            limit_val_batches=1,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        ).fit(module, datamodule=dm)
        if where == "workers":  # the worker's calls land in the worker's copy of `seen`
            assert not seen
        else:
            assert len(seen) == 2  # the two training batches (max_steps=2 ends before validation)
            assert {pid for pid, _ in seen} == {os.getpid()}
            assert {dev for _, dev in seen} == {module.device.type}
