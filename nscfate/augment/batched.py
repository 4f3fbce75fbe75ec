"""The same augmentation policy drawn for a whole batch at once, in torch, on any device.

A policy's albumentations transforms are built as usual (``build_augmentation``); where every one of
them has a batched twin here (``BATCHED``), the loader hands out un-augmented crops and the batch is
augmented by :class:`BatchedPolicy` instead: in the loader workers on a CPU, on the GPU otherwise.
Each twin reads the parameters of the albumentations transform it replaces (probability, ranges,
border mode) and draws them from the same distributions, so a policy means the same thing on both
paths (tests compare them transform by transform). A policy with any other transform (blur, defocus,
noise) stays per-sample.

The geometric twins (flips, quarter turns, Affine) are matrices, drawn for the whole batch in
torch: consecutive ones are multiplied and each crop is moved once (:func:`warp`). A crop whose
matrix is a flip or quarter turn is copied exactly (its pixels reordered); any other crop gets one
bilinear interpolation for the whole chain: on a CPU by ``cv2.warpAffine`` crop by crop, on a GPU by
one ``grid_sample`` for the batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import albumentations as A
import cv2
import numpy as np
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
        # back @ move @ shear @ rotate @ scale @ to_corner, multiplied out (one stack, not five
        # batched products): the linear part L = shear @ rotate @ scale moves p - centre
        cos, sin = a.cos(), a.sin()
        l00, l01 = (cos - shx * sin) * sx, (sin + shx * cos) * sy
        l10, l11 = (shy * cos - sin) * sx, (shy * sin + cos) * sy
        cx, cy = w / 2 - 0.5, h / 2 - 0.5
        ox, oy = cx + tx - (l00 * cx + l01 * cy), cy + ty - (l10 * cx + l11 * cy)
        one, zero = torch.ones_like(sx), torch.zeros_like(sx)
        forward = _stack([[l00, l01, ox], [l10, l11, oy], [zero, zero, one]])
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


def warp(
    x: torch.Tensor, forward: torch.Tensor, border: int | None, fill: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample crops ``x`` (N x H x W) so that source pixel p lands at ``forward @ p``: each output
    pixel is read at ``inverse(forward) @ p'``, as cv2.warpAffine does. A crop whose inverse has
    whole-number entries (flips, quarter turns) is a reordering of its pixels and is copied
    exactly; every other crop is read bilinearly. On a CPU crop by crop (numpy views and
    ``cv2.warpAffine``, what albumentations runs: 3x faster there than ``grid_sample``), on
    another device in a few batched torch operations (:func:`warp_batched`).

    Returns the crops and which of them were resampled (N booleans); the others only had their
    pixels reordered."""
    backward = torch.linalg.inv(forward)
    if x.device.type != "cpu":
        return warp_batched(x, backward, border, fill)
    src = x.detach().contiguous().numpy()
    out = np.empty_like(src)
    resampled = np.ones(len(src), dtype=bool)
    back = backward.numpy()
    rounded = np.rint(back)
    whole = np.abs(back - rounded).max((1, 2)) < 1e-9
    h, w = src.shape[1:]
    flags, border = cv2.WARP_INVERSE_MAP, cv2.BORDER_REPLICATE if border is None else border
    for i, crop in enumerate(src):
        move = _dihedral(rounded[i].astype(int).tolist(), h, w) if whole[i] else None
        if move is not None:
            out[i], resampled[i] = _apply_dihedral(crop, *move), False
            continue
        mode = cv2.INTER_NEAREST if whole[i] else cv2.INTER_LINEAR  # nearest: exact off the crop
        cv2.warpAffine(
            crop,
            back[i, :2],
            (w, h),
            dst=out[i],
            flags=mode | flags,
            borderMode=border,
            borderValue=fill,
        )
    return torch.from_numpy(out), torch.from_numpy(resampled)


def warp_batched(
    x: torch.Tensor, backward: torch.Tensor, border: int | None, fill: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`warp` in batched torch operations (given the backward matrices): one copy per
    distinct flip and quarter turn (eight at most), one ``grid_sample`` for the other crops."""
    rounded = backward.round()
    whole = (backward - rounded).abs().amax((1, 2)) < 1e-9
    moves = {}
    if bool(whole.any()):
        mats, which = torch.unique(rounded[whole].long().reshape(-1, 9), dim=0, return_inverse=True)
        moves = {i: _dihedral(m.reshape(3, 3).tolist(), *x.shape[1:]) for i, m in enumerate(mats)}
    if any(move is None for move in moves.values()):  # reads off the crop: the border rule, exact
        mode = "nearest" if bool(whole.all()) else "bilinear"
        return _resample(x, backward, border, fill, mode), torch.ones_like(whole)
    if not moves:
        return _resample(x, backward, border, fill), ~whole
    out = torch.empty_like(x)
    where = whole.nonzero()[:, 0]
    for i, (transpose, flips) in moves.items():
        group = where[which == i]
        out[group] = _apply_dihedral(x.index_select(0, group), transpose, flips)
    if not bool(whole.all()):
        rest = (~whole).nonzero()[:, 0]
        out[rest] = _resample(x.index_select(0, rest), backward[rest], border, fill)
    return out, ~whole


def _dihedral(b: list[list[int]], h: int, w: int) -> tuple[bool, tuple[int, ...]] | None:
    """A whole-number backward matrix (output pixel -> source pixel) as (transpose, flipped axes)
    of a crop, or None when it reads outside the crop (a shift, or a turn of a non-square crop)."""
    (b00, b01, b02), (b10, b11, b12), _ = b
    if b01 == 0 and b10 == 0 and abs(b00) == 1 and abs(b11) == 1:  # src = (±x, ±y) + t
        transpose, (sx, tx), (sy, ty) = False, (b00, b02), (b11, b12)
    elif b00 == 0 and b11 == 0 and abs(b01) == 1 and abs(b10) == 1 and h == w:  # (±y, ±x) + t
        transpose, (sx, tx), (sy, ty) = True, (b10, b12), (b01, b02)
    else:
        return None
    # out[y, x] = in[sy * y + ty, sx * x + tx] (of the transposed crop): each axis kept or reversed
    if (tx, ty) != (0 if sx > 0 else w - 1, 0 if sy > 0 else h - 1):
        return None
    return transpose, tuple(axis for axis, sign in ((-2, sy), (-1, sx)) if sign < 0)


def _apply_dihedral(x: Any, transpose: bool, flips: tuple[int, ...]) -> Any:
    """Transpose and flip the last two axes of a tensor or an array (views where possible)."""
    if isinstance(x, np.ndarray):
        y = x.swapaxes(-2, -1) if transpose else x
        return np.flip(y, flips) if flips else y
    y = x.transpose(-2, -1) if transpose else x
    return y.flip(flips) if flips else y


def _resample(
    x: torch.Tensor, backward: torch.Tensor, border: int | None, fill: float, mode: str = "bilinear"
) -> torch.Tensor:
    """Read each output pixel of crops ``x`` at ``backward @ p`` with ``grid_sample``."""
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
        return self.apply(x, gen)[0]

    def apply(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented crops and which of them were resampled (N booleans): the others are
        their input with the pixels reordered (a flip or quarter turn, or none)."""
        n, h, w = x.shape
        resampled = torch.zeros(n, dtype=torch.bool, device=x.device)
        forward, border, fill = None, None, 0.0
        for step in self.warps:
            refills = step.border is not None and (step.border, step.fill) != (border, fill)
            if border is not None and refills:  # borders filled two ways: resample in between
                x, moved = warp(x, forward, border, fill)
                resampled, forward, border = resampled | moved, None, None
            moves = step.matrices(n, h, w, gen, x.device)
            forward = moves if forward is None else moves @ forward
            if step.border is not None:
                border, fill = step.border, step.fill
        if forward is None:
            return x, resampled
        x, moved = warp(x, forward, border, fill)
        return x, resampled | moved


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
