"""Augmentation policies built from config (albumentations), applied to float32 crops in [0, 1]."""

from nscfate.augment.policies import build_augmentation, check_keeps_shape, scale_params

__all__ = ["build_augmentation", "check_keeps_shape", "scale_params"]
