"""Build an albumentations pipeline from an ``augmentation`` config node.

A policy is a list of transforms, each ``{_target_: albumentations.<Name>, ...kwargs}``, plus a
scalar ``magnitude`` (1.0 = as written). Magnitude scales each transform's strength parameters
towards or away from their identity value, using one table (``STRENGTH``) rather than per-policy
code, so ``augmentation=strong augmentation.magnitude=0.5`` and a sweep over magnitude both work.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import numpy as np
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from nscfate.errors import NscfateError

#: For each transform: its strength parameters and the value at which each does nothing.
STRENGTH: dict[str, dict[str, float]] = {
    "Affine": {"translate_percent": 0.0, "scale": 1.0, "rotate": 0.0, "shear": 0.0},
    "RandomBrightnessContrast": {"brightness_limit": 0.0, "contrast_limit": 0.0},
    "RandomGamma": {"gamma_limit": 100.0},
    "GaussianBlur": {"sigma_limit": 0.0},
    "Defocus": {"alias_blur": 0.0},
    "GaussNoise": {"std_range": 0.0},
}


def scale_params(name: str, params: Mapping[str, Any], magnitude: float) -> dict[str, Any]:
    """Scale the strength parameters of transform ``name`` by ``magnitude`` about their identity."""
    out = dict(params)
    for key, identity in STRENGTH.get(name, {}).items():
        if key in out and out[key] is not None:
            out[key] = _scale(out[key], identity, magnitude)
    return out


def _scale(value: Any, identity: float, magnitude: float) -> Any:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return (
            type(value)(_scale(v, identity, magnitude) for v in value)
            if isinstance(value, tuple)
            else [_scale(v, identity, magnitude) for v in value]
        )
    if isinstance(value, Mapping):
        return {k: _scale(v, identity, magnitude) for k, v in value.items()}
    return identity + magnitude * (float(value) - identity)


def build_augmentation(
    cfg: DictConfig | Mapping | None, seed: int | None = None
) -> A.Compose | None:
    """Instantiate the policy's transforms (scaled by its magnitude) as one ``A.Compose``.

    Returns None for an empty policy (``augmentation=none``).
    """
    if cfg is None:
        return None
    node = OmegaConf.create(cfg) if not isinstance(cfg, DictConfig) else cfg
    magnitude = float(node.get("magnitude", 1.0))
    if magnitude < 0:
        raise NscfateError(f"augmentation.magnitude={magnitude}: expected a value >= 0")
    transforms = [_build_one(t, magnitude, i) for i, t in enumerate(node.get("transforms") or [])]
    if not transforms:
        return None
    policy = A.Compose(transforms)
    if seed is not None:
        seed_policy(policy, seed)
    return policy


def _build_one(spec: DictConfig, magnitude: float, position: int) -> A.BasicTransform:
    params = OmegaConf.to_container(spec, resolve=True)
    target = str(params.get("_target_", ""))
    if not target.startswith("albumentations."):
        raise NscfateError(
            f"augmentation.transforms[{position}]._target_={target!r}: expected an albumentations "
            "transform such as albumentations.HorizontalFlip"
        )
    name = target.rsplit(".", 1)[-1]
    cls = _transform_class(target)
    if cls is None:
        raise NscfateError(
            f"augmentation.transforms[{position}]._target_={target!r}: not an albumentations transform"
        )
    _check_arguments(cls, params, position, name)
    try:
        return instantiate(scale_params(name, params, magnitude))
    except Exception as err:
        raise NscfateError(f"augmentation.transforms[{position}] ({name}): {err}") from err


def _transform_class(target: str) -> type | None:
    """The albumentations transform class ``target`` names, or None for anything else (a config is
    data: ``albumentations.os.system`` must not reach ``os.system``)."""
    try:
        cls = get_class(target)
    except (ImportError, ValueError):
        return None
    is_transform = isinstance(cls, type) and issubclass(cls, A.BasicTransform)
    return cls if is_transform and cls.__module__.startswith("albumentations.") else None


def _check_arguments(cls: type, params: Mapping[str, Any], position: int, name: str) -> None:
    """Albumentations only warns about unknown arguments; a typo must not silently do nothing."""
    accepted = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k in params if not k.startswith("_") and k not in accepted)
    if unknown:
        options = ", ".join(k for k in accepted if k not in ("self", "args", "kwargs"))
        raise NscfateError(
            f"augmentation.transforms[{position}] ({name}): unknown argument(s) {unknown}; "
            f"expected some of {options}"
        )


#: Draws per transform when checking that a policy keeps a crop's shape (seeded: deterministic).
SHAPE_PROBES = 16


def check_keeps_shape(policy: A.Compose | None, shape: tuple[int, int], name: str) -> None:
    """Fail if a transform of ``policy`` can change a ``shape`` crop's shape (e.g. a 90° rotation
    of a non-square crop), which would break batching; every transform is forced on a blank crop."""
    if policy is None:
        return
    blank = np.zeros(shape, dtype=np.float32)
    for transform in policy.transforms:
        probe = copy.deepcopy(transform)
        probe.set_random_seed(0)
        for _ in range(SHAPE_PROBES):
            out = probe(image=blank, force_apply=True)["image"].shape[:2]
            if out != shape:
                raise NscfateError(
                    f"augmentation={name}: {type(transform).__name__} turns a "
                    f"{shape[0]}x{shape[1]} crop into {out[0]}x{out[1]}; keep "
                    "data.pad_to_square=true (the default) or use a policy without it"
                )


def seed_policy(policy: A.Compose, seed: int) -> None:
    """Seed ``policy`` and give each of its transforms a stream of its own.

    ``A.Compose.set_random_seed`` (albumentations 2.0.8) hands the same seed to every transform, so
    transforms that draw alike fire together: HorizontalFlip and VerticalFlip at p=0.5 would both
    flip or neither, and a crop would never be mirrored.
    """
    policy.set_random_seed(seed)
    streams = np.random.SeedSequence(seed).spawn(len(policy.transforms))
    for transform, stream in zip(policy.transforms, streams, strict=True):
        transform.set_random_seed(int(stream.generate_state(1)[0]))
