"""The same augmentation policy drawn for a whole batch at once, in torch, on any device.

A policy's albumentations transforms are built as usual (``build_augmentation``); where every one of
them has a batched twin here (``BATCHED``), the loader hands out un-augmented crops and the batch is
augmented by :class:`BatchedPolicy` instead: in the loader workers on a CPU, on the GPU otherwise.
Each twin reads the parameters of the albumentations transform it replaces (probability, ranges,
border mode) and draws them from the same distributions, so a policy means the same thing on both
paths (tests compare them transform by transform). A policy with any other transform (blur, defocus,
noise) stays per-sample.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import albumentations as A
import cv2
import torch
import torch.nn.functional as F

#: Batched twin of one albumentations transform: (crops N x H x W, generator) -> crops.
BatchedFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

#: cv2 border modes grid_sample reproduces (BORDER_CONSTANT needs its fill, handled below).
_PADDING = {cv2.BORDER_REFLECT: "reflection", cv2.BORDER_REPLICATE: "border"}


def _chosen(n: int, p: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Which of ``n`` crops a transform with probability ``p`` applies to (N booleans)."""
    return torch.rand(n, generator=gen, device=device) < p


def _uniform(
    n: int, bounds: tuple[float, float], gen: torch.Generator, device: torch.device
) -> torch.Tensor:
    low, high = (float(b) for b in bounds)
    return low + (high - low) * torch.rand(n, generator=gen, device=device, dtype=torch.float64)


def _flip(dim: int) -> Callable[[A.BasicTransform], BatchedFn]:
    def build(t: A.BasicTransform) -> BatchedFn:
        def apply(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            mask = _chosen(len(x), t.p, gen, x.device)[:, None, None]
            return torch.where(mask, x.flip(dim), x)

        return apply

    return build


def _rotate90(t: A.BasicTransform) -> BatchedFn:
    def apply(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        # albumentations draws k from {0, 1, 2, 3} once the transform applies (np.rot90 sense)
        k = torch.randint(0, 4, (len(x),), generator=gen, device=x.device)
        k = torch.where(_chosen(len(x), t.p, gen, x.device), k, 0)
        turns = torch.stack([torch.rot90(x, r, dims=(-2, -1)) for r in range(4)])
        return turns[k, torch.arange(len(x), device=x.device)]

    return apply


def _affine(t: A.Affine) -> BatchedFn | None:
    """Affine with translate_percent, per-axis scale, rotate and shear; linear interpolation."""
    unsupported = (
        t.fit_output
        or t.balanced_scale
        or t.translate_px is not None
        or t.interpolation != cv2.INTER_LINEAR
        or (t.border_mode not in _PADDING and t.border_mode != cv2.BORDER_CONSTANT)
        or (t.border_mode == cv2.BORDER_CONSTANT and not isinstance(t.fill, int | float))
    )
    if unsupported:
        return None

    def apply(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, h, w = x.shape
        dev = x.device
        shift = torch.tensor([[1.0, 0, -(w / 2 - 0.5)], [0, 1, -(h / 2 - 0.5)], [0, 0, 1]])
        tr = t.translate_percent or {"x": (0.0, 0.0), "y": (0.0, 0.0)}
        tx = torch.trunc(_uniform(n, tr["x"], gen, dev) * w)  # int() in albumentations
        ty = torch.trunc(_uniform(n, tr["y"], gen, dev) * h)
        sx = _uniform(n, t.scale["x"], gen, dev)
        sy = sx if t.keep_ratio else _uniform(n, t.scale["y"], gen, dev)
        angle = torch.deg2rad(_uniform(n, t.rotate, gen, dev) % 360)
        shx = torch.deg2rad(-_uniform(n, t.shear["x"], gen, dev))
        shy = torch.deg2rad(-_uniform(n, t.shear["y"], gen, dev))
        one, zero = torch.ones_like(sx), torch.zeros_like(sx)
        rows = lambda *r: torch.stack([torch.stack(v, -1) for v in r], -2)  # noqa: E731
        scale = rows((sx, zero, zero), (zero, sy, zero), (zero, zero, one))
        rot = rows(
            (angle.cos(), angle.sin(), zero), (-angle.sin(), angle.cos(), zero), (zero, zero, one)
        )
        shear = rows((one, shx.tan(), zero), (shy.tan(), one, zero), (zero, zero, one))
        move = rows((one, zero, tx), (zero, one, ty), (zero, zero, one))
        shift = shift.to(dev, torch.float64)
        forward = shift.inverse() @ move @ shear @ rot @ scale @ shift
        chosen = _chosen(n, t.p, gen, dev)
        eye = torch.eye(3, dtype=torch.float64, device=dev).expand(n, 3, 3)
        back = torch.where(chosen[:, None, None], forward, eye).inverse()
        return _warp(x, back, t.border_mode, float(t.fill) if not _is_tuple(t.fill) else 0.0)

    return apply


def _is_tuple(value: Any) -> bool:
    return isinstance(value, tuple | list)


def _warp(x: torch.Tensor, back: torch.Tensor, border: int, fill: float) -> torch.Tensor:
    """Resample ``x`` (N x H x W) at ``back @ (x', y', 1)`` for every output pixel (x', y'), with
    pixel centres at integer coordinates as cv2.warpAffine has them."""
    n, h, w = x.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, device=x.device, dtype=torch.float64),
        torch.arange(w, device=x.device, dtype=torch.float64),
        indexing="ij",
    )
    points = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3)  # (HW, 3)
    source = (back[:, None, :2, :] @ points[None, :, :, None])[..., 0]  # (N, HW, 2)
    grid = torch.stack(
        [(2 * source[..., 0] + 1) / w - 1, (2 * source[..., 1] + 1) / h - 1], -1
    ).reshape(n, h, w, 2)
    padding = _PADDING.get(border, "zeros")
    out = F.grid_sample(
        (x - fill)[:, None],
        grid.to(x.dtype),
        mode="bilinear",
        padding_mode=padding,
        align_corners=False,
    )
    return out[:, 0] + fill


#: albumentations transform name -> builder of its batched twin (None: options it cannot follow).
BATCHED: dict[str, Callable[[Any], BatchedFn | None]] = {
    "HorizontalFlip": _flip(-1),
    "VerticalFlip": _flip(-2),
    "RandomRotate90": _rotate90,
    "Affine": _affine,
}


class BatchedPolicy:
    """An albumentations policy applied to a whole batch of float crops (N x H x W) at once."""

    def __init__(self, steps: list[BatchedFn], names: list[str]) -> None:
        self.steps, self.names = steps, names

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        for step in self.steps:
            x = step(x, gen)
        return x


def batched_policy(policy: A.Compose | None) -> BatchedPolicy | None:
    """The batched twin of ``policy``, or None when one of its transforms has none (or uses an
    option the twin cannot follow): that policy runs per sample in albumentations."""
    if policy is None:
        return None
    steps, names = [], []
    for transform in policy.transforms:
        name = type(transform).__name__
        builder = BATCHED.get(name)
        step = builder(transform) if builder is not None else None
        if step is None:
            return None
        steps.append(step)
        names.append(name)
    return BatchedPolicy(steps, names)
