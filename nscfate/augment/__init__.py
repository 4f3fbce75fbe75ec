"""Augmentation policies built from config (albumentations), applied to float32 crops in [0, 1], and
their batched torch twins (``nscfate.augment.batched``)."""

from nscfate.augment.policies import (
    build_augmentation,
    check_keeps_shape,
    scale_params,
    seed_policy,
)

__all__ = ["build_augmentation", "check_keeps_shape", "scale_params", "seed_policy"]
