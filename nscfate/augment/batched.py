"""The same augmentation policy drawn for a whole batch at once, in torch, on any device.

A policy's albumentations transforms are built as usual (``build_augmentation``); where every one of
them has a batched twin here (``BATCHED``), the loader hands out un-augmented crops and the batch is
augmented by :class:`BatchedPolicy` instead: in the loader workers on a CPU, on the GPU otherwise.
Each twin reads the parameters of the albumentations transform it replaces (probability, ranges,
border mode) and draws them from the same distributions, so a policy means the same thing on both
paths (tests compare them transform by transform). A policy with any other transform (blur, defocus,
noise) stays per-sample.

The geometric twins (flips, quarter turns, Affine) are matrices: consecutive ones are multiplied and
the batch is resampled once (``grid_sample``), which is exact for flips and quarter turns (they land
on pixel centres) and one bilinear interpolation for the whole chain.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import albumentations as A
import cv2
import torch
import torch.nn.functional as F

#: cv2 border modes grid_sample reproduces (BORDER_CONSTANT: zeros padding around ``fill``).
_PADDING = {
    cv2.BORDER_REFLECT: "reflection",
    cv2.BORDER_REPLICATE: "border",
    cv2.BORDER_CONSTANT: "zeros",
}

#: (n, h, w, generator, device) -> N x 3 x 3 matrices moving a source pixel to its output place.
Matrices = Callable[[int, int, int, torch.Generator, torch.device], torch.Tensor]


@dataclass
class Warp:
    """A geometric transform as per-crop 3 x 3 matrices that move a source pixel (x, y, 1) to its
    place in the output, pixel centres at integer coordinates (cv2's convention). ``border`` is the
    cv2 border mode for output pixels that come from outside the crop (None: none ever do)."""

    matrices: Matrices
    border: int | None = None
    fill: float = 0.0


def _chosen(n: int, p: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Which of ``n`` crops a transform with probability ``p`` applies to (N booleans)."""
    return torch.rand(n, generator=gen, device=device) < p


def _uniform(
    n: int, bounds: tuple[float, float], gen: torch.Generator, device: torch.device
) -> torch.Tensor:
    low, high = (float(b) for b in bounds)
    return low + (high - low) * torch.rand(n, generator=gen, device=device, dtype=torch.float64)


def _stack(rows: list[list[torch.Tensor]]) -> torch.Tensor:
    """N x 3 x 3 matrices from a 3 x 3 nest of N-vectors."""
    return torch.stack([torch.stack(row, -1) for row in rows], -2)


def _only(chosen: torch.Tensor, moves: torch.Tensor) -> torch.Tensor:
    """``moves`` where ``chosen``, the identity elsewhere."""
    eye = torch.eye(3, dtype=moves.dtype, device=moves.device).expand_as(moves)
    return torch.where(chosen[:, None, None], moves, eye)


def _fixed(matrix: list[list[float]], n: int, dev: torch.device) -> torch.Tensor:
    return torch.tensor(matrix, dtype=torch.float64, device=dev).expand(n, 3, 3)


def _hflip(t: A.BasicTransform) -> Warp:
    def matrices(n: int, h: int, w: int, gen: torch.Generator, dev: torch.device) -> torch.Tensor:
        flip = _fixed([[-1, 0, w - 1], [0, 1, 0], [0, 0, 1]], n, dev)
        return _only(_chosen(n, t.p, gen, dev), flip)

    return Warp(matrices)


def _vflip(t: A.BasicTransform) -> Warp:
    def matrices(n: int, h: int, w: int, gen: torch.Generator, dev: torch.device) -> torch.Tensor:
        flip = _fixed([[1, 0, 0], [0, -1, h - 1], [0, 0, 1]], n, dev)
        return _only(_chosen(n, t.p, gen, dev), flip)

    return Warp(matrices)


def _rotate90(t: A.BasicTransform) -> Warp:
    """k quarter turns in np.rot90's sense, k drawn from {0, 1, 2, 3} (square crops)."""

    def matrices(n: int, h: int, w: int, gen: torch.Generator, dev: torch.device) -> torch.Tensor:
        k = torch.randint(0, 4, (n,), generator=gen, device=dev)
        k = torch.where(_chosen(n, t.p, gen, dev), k, 0)
        # np.rot90 once: out[y', x'] = in[x', w - 1 - y'], i.e. (x, y) -> (y, w - 1 - x)
        turn = torch.tensor([[0, 1, 0], [-1, 0, w - 1], [0, 0, 1]], dtype=torch.float64, device=dev)
        powers = torch.stack([torch.linalg.matrix_power(turn, r) for r in range(4)])
        return powers[k]

    return Warp(matrices)


def _affine(t: A.Affine) -> Warp | None:
    """Affine with translate_percent, per-axis scale, rotate and shear; linear interpolation;
    reflect, replicate or constant borders. Any other option: no twin."""
    unsupported = (
        t.fit_output
        or t.balanced_scale
        or t.translate_px is not None
        or t.interpolation != cv2.INTER_LINEAR
        or t.border_mode not in _PADDING
        or isinstance(t.fill, tuple | list)
    )
    if unsupported:
        return None

    def matrices(n: int, h: int, w: int, gen: torch.Generator, dev: torch.device) -> torch.Tensor:
        # albumentations' create_affine_transformation_matrix, parameters drawn as it draws them
        tr = t.translate_percent or {"x": (0.0, 0.0), "y": (0.0, 0.0)}
        tx = torch.trunc(_uniform(n, tr["x"], gen, dev) * w)  # int() in albumentations
        ty = torch.trunc(_uniform(n, tr["y"], gen, dev) * h)
        sx = _uniform(n, t.scale["x"], gen, dev)
        sy = sx if t.keep_ratio else _uniform(n, t.scale["y"], gen, dev)
        a = torch.deg2rad(_uniform(n, t.rotate, gen, dev) % 360)
        shx = torch.deg2rad(-_uniform(n, t.shear["x"], gen, dev)).tan()
        shy = torch.deg2rad(-_uniform(n, t.shear["y"], gen, dev)).tan()
        one, zero = torch.ones_like(sx), torch.zeros_like(sx)
        scale = _stack([[sx, zero, zero], [zero, sy, zero], [zero, zero, one]])
        rotate = _stack([[a.cos(), a.sin(), zero], [-a.sin(), a.cos(), zero], [zero, zero, one]])
        shear = _stack([[one, shx, zero], [shy, one, zero], [zero, zero, one]])
        move = _stack([[one, zero, tx], [zero, one, ty], [zero, zero, one]])
        cx, cy = w / 2 - 0.5, h / 2 - 0.5
        to_corner = _fixed([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], n, dev)
        back = _fixed([[1, 0, cx], [0, 1, cy], [0, 0, 1]], n, dev)
        forward = back @ move @ shear @ rotate @ scale @ to_corner
        return _only(_chosen(n, t.p, gen, dev), forward)

    return Warp(matrices, t.border_mode, float(t.fill))


@functools.cache
def _pixel_grid(h: int, w: int, device: torch.device) -> torch.Tensor:
    """3 x (H*W) homogeneous (x, y, 1) coordinates of the pixel centres, row by row (float64)."""
    gy, gx = torch.meshgrid(
        torch.arange(h, dtype=torch.float64, device=device),
        torch.arange(w, dtype=torch.float64, device=device),
        indexing="ij",
    )
    return torch.stack([gx.flatten(), gy.flatten(), torch.ones_like(gx.flatten())])


@functools.cache
def _to_unit(h: int, w: int, device: torch.device) -> torch.Tensor:
    """Pixel coordinates -> grid_sample's [-1, 1] units (align_corners=False), 3 x 3 float64."""
    return torch.tensor(
        [[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]],
        dtype=torch.float64,
        device=device,
    )


@functools.cache
def _unit_centres(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """3 x (H*W) pixel centres in grid_sample's [-1, 1] units."""
    return (_to_unit(h, w, device) @ _pixel_grid(h, w, device)).to(dtype)


def warp(x: torch.Tensor, forward: torch.Tensor, border: int | None, fill: float) -> torch.Tensor:
    """Resample crops ``x`` (N x H x W) so that source pixel p lands at ``forward @ p``: each output
    pixel is read at ``inverse(forward) @ p'``, as cv2.warpAffine does. A crop whose inverse has
    whole-number entries (flips, quarter turns) is a reordering of its pixels and is read exactly
    by index; every other crop is read bilinearly (``grid_sample``)."""
    backward = torch.linalg.inv(forward)
    whole = (backward - backward.round()).abs().amax((1, 2)) < 1e-9
    if bool(whole.all()):
        return _reorder(x, backward.round(), border, fill)
    if not bool(whole.any()):
        return _resample(x, backward, border, fill)
    out = torch.empty_like(x)
    out[whole] = _reorder(x[whole], backward[whole].round(), border, fill)
    out[~whole] = _resample(x[~whole], backward[~whole], border, fill)
    return out


def _reorder(
    x: torch.Tensor, backward: torch.Tensor, border: int | None, fill: float
) -> torch.Tensor:
    """Crops moved by whole-number matrices: one gather by a source-pixel table per distinct matrix
    (eight at most for flips and quarter turns). Reads from outside the crop need the border
    rule: those crops go to ``grid_sample`` with nearest reads, which is exact too."""
    m, h, w = x.shape
    mats, which = torch.unique(backward.reshape(m, 9), dim=0, return_inverse=True)
    src = (mats.reshape(-1, 3, 3)[:, :2] @ _pixel_grid(h, w, x.device)).round().long()
    sx, sy = src[:, 0], src[:, 1]
    if not bool(((sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)).all()):
        return _resample(x, backward, border, fill, mode="nearest")
    table = sy * w + sx  # distinct matrices x (H*W): the source pixel of every output pixel
    return x.reshape(m, h * w).gather(1, table[which]).reshape(m, h, w)


def _resample(
    x: torch.Tensor, backward: torch.Tensor, border: int | None, fill: float, mode: str = "bilinear"
) -> torch.Tensor:
    n, h, w = x.shape
    to_unit = _to_unit(h, w, x.device)
    theta = (to_unit @ backward @ torch.linalg.inv(to_unit))[:, :2].to(x.dtype)
    # what affine_grid returns, by one product with the cached pixel centres: 4x cheaper on a CPU
    grid = (theta @ _unit_centres(h, w, x.dtype, x.device)).transpose(1, 2).contiguous()
    grid = grid.reshape(n, h, w, 2)
    padding = _PADDING[border] if border is not None else "border"
    shifted = x - fill if fill else x  # zeros padding around the fill value
    out = F.grid_sample(
        shifted[:, None], grid, mode=mode, padding_mode=padding, align_corners=False
    )
    return out[:, 0] + fill if fill else out[:, 0]


#: albumentations transform name -> builder of its batched twin (None: an option it cannot follow).
BATCHED: dict[str, Callable[[A.BasicTransform], Warp | None]] = {
    "HorizontalFlip": _hflip,
    "VerticalFlip": _vflip,
    "RandomRotate90": _rotate90,
    "Affine": _affine,
}


class BatchedPolicy:
    """An albumentations policy applied to a whole batch of float crops (N x H x W) at once: the
    warps of consecutive geometric transforms multiplied, one resampling per run of them."""

    def __init__(self, warps: list[Warp], names: list[str]) -> None:
        self.warps, self.names = warps, names

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, h, w = x.shape
        forward, border, fill = None, None, 0.0
        for step in self.warps:
            if (
                border is not None
                and step.border is not None
                and (step.border, step.fill)
                != (
                    border,
                    fill,
                )
            ):  # two transforms that fill their borders differently: resample in between
                x, forward, border = warp(x, forward, border, fill), None, None
            moves = step.matrices(n, h, w, gen, x.device)
            forward = moves if forward is None else moves @ forward
            if step.border is not None:
                border, fill = step.border, step.fill
        return warp(x, forward, border, fill) if forward is not None else x


def batched_policy(policy: A.Compose | None) -> BatchedPolicy | None:
    """The batched twin of ``policy``, or None when one of its transforms has none (or uses an
    option the twin cannot follow): that policy runs per sample in albumentations."""
    if policy is None:
        return None
    warps, names = [], []
    for transform in policy.transforms:
        name = type(transform).__name__
        builder = BATCHED.get(name)
        step = builder(transform) if builder is not None else None
        if step is None:
            return None
        warps.append(step)
        names.append(name)
    return BatchedPolicy(warps, names)
