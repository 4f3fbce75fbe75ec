"""NscNet: the Xception-style network of the seed paper (Zhu et al. 2021), re-implemented.

Layer by layer it matches the authors' released ``Network(1, 3)``: at the defaults (``width=1``,
``middle_blocks=4``) it has exactly 3,992,867 trainable parameters (every conv bias-free, BatchNorm
affine parameters counted). Differences: ``width`` scales all channel counts, ``middle_blocks=0``
works (the original crashed), optional dropout before the classifier, Kaiming init. The module
layout is our own, so the authors' checkpoint would need a key mapping to load.

Layout (channels at ``width=1``; spatial size for a 64x64 input)::

    stem     conv3x3 in->32, conv3x3 32->64 (BN-ReLU each)     64x64
    down1    2 sep-convs ->128, maxpool/2  + 1x1/2 shortcut    32x32
    down2    2 sep-convs ->256, maxpool/2  + 1x1/2 shortcut    16x16
    middle   N x [3 x (ReLU-sepconv-BN)]   + identity          16x16
    down3    ReLU-sep ->256, ReLU-sep ->512, maxpool/2 + 1x1/2  8x8
    exit     sep ->1024, sep ->2048 (BN-ReLU each)               8x8
    head     global average pool, dropout, linear -> num_classes
"""

from __future__ import annotations

import torch
from torch import nn

from nscfate.errors import NscfateError
from nscfate.models.factory import register_model


def scale_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded to a multiple of 8 (at least 8)."""
    return max(8, int(round(channels * width / 8)) * 8)


class SeparableConv2d(nn.Sequential):
    """Depthwise 3x3 conv followed by a pointwise 1x1 conv, both bias-free (BN follows)."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_chs, in_chs, 3, padding=1, groups=in_chs, bias=False)
        self.pointwise = nn.Conv2d(in_chs, out_chs, 1, bias=False)


class Residual(nn.Module):
    """``body(x) + shortcut(x)``; the shortcut is the identity unless given."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut if shortcut is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


def _sep_bn(in_chs: int, out_chs: int, relu_before: bool) -> list[nn.Module]:
    # The first ReLU of a residual body reads the shortcut's input too, so it must not be in-place.
    pre = [nn.ReLU()] if relu_before else []
    return [*pre, SeparableConv2d(in_chs, out_chs), nn.BatchNorm2d(out_chs)]


def _down_block(in_chs: int, mid_chs: int, out_chs: int, relu_first: bool) -> Residual:
    """Two separable convs then a stride-2 max-pool, with a strided 1x1 conv + BN shortcut."""
    body = nn.Sequential(
        *_sep_bn(in_chs, mid_chs, relu_before=relu_first),
        nn.ReLU(inplace=True),
        *_sep_bn(mid_chs, out_chs, relu_before=False),
        nn.MaxPool2d(3, stride=2, padding=1),
    )
    shortcut = nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 1, stride=2, bias=False), nn.BatchNorm2d(out_chs)
    )
    return Residual(body, shortcut)


def _middle_block(chs: int) -> Residual:
    """Xception middle flow: three pre-activated separable convs with an identity shortcut."""
    body = [*_sep_bn(chs, chs, relu_before=True)]
    for _ in range(2):
        body += [nn.ReLU(inplace=True), SeparableConv2d(chs, chs), nn.BatchNorm2d(chs)]
    return Residual(nn.Sequential(*body))


def _conv_bn_relu(conv: nn.Module, out_chs: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(out_chs), nn.ReLU(inplace=True)]


@register_model("nscnet")
class NscNet(nn.Module):
    """The seed paper's Xception-style CNN; fully convolutional, so any input size works.

    Args:
        num_classes: number of output logits (3 fates).
        in_chans: input channels (1 for grey bright field).
        width: multiplier for every channel count (rounded to a multiple of 8).
        middle_blocks: number of middle-flow residual blocks (the paper uses 4; 0 is allowed).
        dropout: dropout probability before the linear classifier (the paper has none).
    """

    def __init__(
        self,
        num_classes: int = 3,
        in_chans: int = 1,
        width: float = 1.0,
        middle_blocks: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_options(width, middle_blocks, dropout)
        c32, c64, c128, c256, c512, c1024, c2048 = (
            scale_channels(c, width) for c in (32, 64, 128, 256, 512, 1024, 2048)
        )
        self.stem = nn.Sequential(
            *_conv_bn_relu(nn.Conv2d(in_chans, c32, 3, padding=1, bias=False), c32),
            *_conv_bn_relu(nn.Conv2d(c32, c64, 3, padding=1, bias=False), c64),
        )
        self.down1 = _down_block(c64, c128, c128, relu_first=False)
        self.down2 = _down_block(c128, c256, c256, relu_first=False)
        self.middle = nn.Sequential(*(_middle_block(c256) for _ in range(middle_blocks)))
        self.down3 = _down_block(c256, c256, c512, relu_first=True)
        self.exit = nn.Sequential(
            *_conv_bn_relu(SeparableConv2d(c512, c1024), c1024),
            *_conv_bn_relu(SeparableConv2d(c1024, c2048), c2048),
        )
        self.num_features = c2048
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c2048, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map (B, num_features, H/8, W/8) before pooling."""
        x = self.stem(x)
        x = self.down2(self.down1(x))
        x = self.down3(self.middle(x))
        return self.exit(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Pool a feature map and classify it into raw logits (B, num_classes)."""
        return self.classifier(self.dropout(torch.flatten(self.pool(x), 1)))

    def get_classifier(self) -> nn.Module:
        """The final linear layer (timm's name; its input is the penultimate feature vector)."""
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw logits (B, num_classes) for images (B, in_chans, H, W)."""
        return self.forward_head(self.forward_features(x))


def _check_options(width: float, middle_blocks: int, dropout: float) -> None:
    if not width > 0:
        raise NscfateError(f"model.width={width!r}: expected a positive multiplier (1.0 = paper)")
    if isinstance(middle_blocks, bool) or not isinstance(middle_blocks, int) or middle_blocks < 0:
        raise NscfateError(
            f"model.middle_blocks={middle_blocks!r}: expected an integer >= 0 (paper: 4)"
        )
    if not 0 <= dropout < 1:
        raise NscfateError(f"model.dropout={dropout!r}: expected a probability in [0, 1)")
