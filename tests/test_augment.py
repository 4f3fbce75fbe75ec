"""Augmentation policies: built from config, sweepable by name and magnitude, on 8- and 16-bit input."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
from omegaconf import OmegaConf

from nscfate.augment import build_augmentation, scale_params, seed_policy
from nscfate.data.normalize import per_image, to_unit_float
from nscfate.errors import NscfateError

from .conftest import CONF

POLICIES = sorted(p.stem for p in (CONF / "augmentation").glob("*.yaml"))


def _raw(dtype, white: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    crop = rng.normal(0.5 * white, 0.02 * white, (48, 48))
    crop[18:30, 20:28] *= 0.7
    return np.clip(crop, 0, white).astype(dtype)


def test_policies_exist():
    assert {"none", "light", "strong"} <= set(POLICIES)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(
    ("dtype", "white"), [(np.uint8, 255), (np.uint16, 4095), (np.uint16, 65535)]
)
def test_every_policy_runs_on_8_and_16_bit_crops(policy, dtype, white):
    transform = build_augmentation(OmegaConf.load(CONF / "augmentation" / f"{policy}.yaml"), seed=0)
    crop = to_unit_float(_raw(dtype, white), white)
    out = crop if transform is None else transform(image=crop)["image"]
    out = per_image(out)
    assert out.shape == (48, 48) and out.dtype == np.float32 and np.isfinite(out).all()
    if policy == "none":
        assert transform is None
    else:
        assert len(transform.transforms) >= 4


def test_acquisition_is_light_geometry_plus_strong_intensity():
    """The acquisition policy keeps a cell's size as light does and varies its imaging as strong does."""
    load = {name: OmegaConf.load(CONF / "augmentation" / f"{name}.yaml") for name in POLICIES}
    geometric = ("Flip", "Rotate90", "Affine")
    strong_imaging = [t for t in load["strong"].transforms if not t._target_.endswith(geometric)]
    assert len(strong_imaging) == 5
    assert list(load["acquisition"].transforms) == list(load["light"].transforms) + strong_imaging


def test_strong_changes_intensity_and_light_keeps_histogram():
    crop = to_unit_float(_raw(np.uint8, 255), 255)
    light = build_augmentation(OmegaConf.load(CONF / "augmentation" / "light.yaml"), seed=1)
    strong = build_augmentation(OmegaConf.load(CONF / "augmentation" / "strong.yaml"), seed=1)
    outs = [strong(image=crop)["image"] for _ in range(20)]
    assert max(abs(float(o.mean() - crop.mean())) for o in outs) > 0.005
    flipped = [light(image=crop)["image"] for _ in range(10)]
    assert any(not np.allclose(f, crop) for f in flipped)


def test_magnitude_scales_strength_about_identity():
    params = {"translate_percent": [-0.1, 0.1], "scale": [0.8, 1.2], "p": 0.5}
    assert scale_params("Affine", params, 0.5) == {
        "translate_percent": [-0.05, 0.05],
        "scale": [0.9, 1.1],
        "p": 0.5,
    }
    assert scale_params("RandomGamma", {"gamma_limit": [80, 120]}, 0.0) == {
        "gamma_limit": [100.0, 100.0]
    }
    cfg = OmegaConf.load(CONF / "augmentation" / "strong.yaml")
    cfg.magnitude = 2.0
    noise = build_augmentation(cfg).transforms[-1]
    assert tuple(noise.std_range) == pytest.approx((0.004, 0.04))


def test_seeded_policy_is_reproducible():
    cfg = OmegaConf.load(CONF / "augmentation" / "strong.yaml")
    crop = to_unit_float(_raw(np.uint8, 255), 255)
    a = build_augmentation(cfg, seed=7)(image=crop)["image"]
    b = build_augmentation(cfg, seed=7)(image=crop)["image"]
    assert np.array_equal(a, b)


def test_bad_policies_are_named():
    with pytest.raises(NscfateError, match=r"transforms\[0\]._target_='torch.nn.Identity'"):
        build_augmentation({"transforms": [{"_target_": "torch.nn.Identity"}]})
    with pytest.raises(NscfateError, match=r"transforms\[0\] \(GaussNoise\)"):
        build_augmentation(
            {"transforms": [{"_target_": "albumentations.GaussNoise", "std_rang": [0, 1]}]}
        )
    with pytest.raises(NscfateError, match="magnitude"):
        build_augmentation({"magnitude": -1, "transforms": []})


@pytest.mark.parametrize(
    "target",
    [
        "albumentations.os.system",
        "albumentations.core.serialization.Path",
        "albumentations.Compose",
    ],
)
def test_only_albumentations_transforms_are_built(target):
    with pytest.raises(NscfateError, match="not an albumentations transform"):
        build_augmentation({"transforms": [{"_target_": target, "command": "true"}]})


def test_a_seeded_policy_draws_each_transform_independently():
    """albumentations 2.0.8 hands a Compose's seed to every transform unchanged, so two transforms
    that draw alike (HorizontalFlip and VerticalFlip) would always fire together: the light policy
    would never mirror a crop. Each transform gets a seed of its own, at build and per worker."""
    light = OmegaConf.load(CONF / "augmentation" / "light.yaml")
    policy = build_augmentation(light, seed=1)
    img = np.random.default_rng(0).random((16, 16)).astype(np.float32)

    def both_flipped(p: A.Compose) -> float:
        hflip, vflip = p.transforms[:2]

        def fired(t: A.BasicTransform) -> bool:
            return not np.array_equal(t(image=img)["image"], img)

        return np.mean([all([fired(hflip), fired(vflip)]) for _ in range(2000)])

    assert abs(both_flipped(policy) - 0.25) < 0.04
    seed_policy(policy, 7)  # what a loader worker does with its own seed
    assert abs(both_flipped(policy) - 0.25) < 0.04
