"""SmallCNN: a tiny, fast baseline for CPU runs, demos and tests (~66 k parameters at defaults)."""

from __future__ import annotations

import torch
from torch import nn

from nscfate.errors import NscfateError
from nscfate.models.factory import register_model


@register_model("small_cnn")
class SmallCNN(nn.Module):
    """``depth`` conv3x3-BN-ReLU layers, max-pooling by 2 between them, global average pool, linear.

    Channels double every second layer (``width, width, 2*width, 2*width, 4*width, ...``). Pooling
    uses ``ceil_mode`` so small or odd inputs (45x30) never shrink to zero.

    Args:
        num_classes: number of output logits.
        in_chans: input channels.
        width: channels of the first layer.
        depth: number of conv layers.
    """

    def __init__(
        self, num_classes: int = 3, in_chans: int = 1, width: int = 32, depth: int = 4
    ) -> None:
        super().__init__()
        for key, value in (("width", width), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise NscfateError(f"model.{key}={value!r}: expected a positive integer")
        layers: list[nn.Module] = []
        chs = in_chans
        for i in range(depth):
            out = width * 2 ** (i // 2)
            if i > 0:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            layers += [
                nn.Conv2d(chs, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            chs = out
        self.features = nn.Sequential(*layers)
        self.num_features = chs
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(chs, num_classes)

    def get_classifier(self) -> nn.Module:
        """The final linear layer (timm's name; its input is the penultimate feature vector)."""
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw logits (B, num_classes) for images (B, in_chans, H, W)."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
