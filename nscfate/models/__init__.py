"""Model architectures: the paper's NscNet, a small CPU baseline, and any timm model by name."""

from nscfate.models.factory import (
    available_models,
    classifier_of,
    create_model,
    nscfate_models,
    register_model,
)
from nscfate.models.nscnet import NscNet, SeparableConv2d
from nscfate.models.small_cnn import SmallCNN

__all__ = [
    "NscNet",
    "SeparableConv2d",
    "SmallCNN",
    "available_models",
    "classifier_of",
    "create_model",
    "nscfate_models",
    "register_model",
]
