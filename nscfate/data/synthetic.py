"""Synthetic bright-field single-cell crops of differentiating neural stem cells.

Imaging-flow-cytometry style, one cell per crop on a flat grey background. Each cell is drawn as an
optical-path (phase) map plus a weak absorption map and imaged through a defocused, partially
coherent bright-field pupil with an FFT, which gives the dark rim / light halo and the granular look
of real crops; then an illumination gradient, the batch's background level and gain, and a shot +
read-noise camera (8-bit, or 12-bit data in uint16).

Biology: maturity ``m = 1 - exp(-day / 3)`` (per culture and per cell jittered). Every trait moves
linearly in ``m`` from a shared NSC baseline to its class value (``_TRAITS``): neurons small, round,
phase-dense, with 1-3 thin tapered neurites that lengthen with m; astrocytes larger, flatter,
irregular, with low interior contrast; oligodendrocytes medium, highly granular, with several short
fine processes. Doublets, debris and strongly defocused cells occur in every class. All latent
traits are stored in the index (``lat_*``) and every acquisition parameter (``acq_*``), so
:mod:`nscfate.data.oracle` can measure how separable each day really is and how strong the
brightness confound is. ``benchmarks/synth_difficulty.py`` measures both.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from nscfate.data.schema import (
    ACQUISITION_PREFIX,
    CLASSES,
    CONTROL,
    LATENT_PREFIX,
    canonical_label,
)
from nscfate.errors import NscfateError

#: Bump whenever the output for a given seed changes.
GENERATOR_VERSION = "1.0.0"

#: Independent inducer conditions and the fate proportions of their cultures.
DEFAULT_CONDITIONS: dict[str, dict[str, float]] = {
    "NT3": {"astrocyte": 0.2, "oligodendrocyte": 0.15, "neuron": 0.65},
    "CNTF": {"astrocyte": 0.65, "oligodendrocyte": 0.15, "neuron": 0.2},
    "T3": {"astrocyte": 0.2, "oligodendrocyte": 0.6, "neuron": 0.2},
    "nanoparticle": {"astrocyte": 0.25, "oligodendrocyte": 0.2, "neuron": 0.55},
}

#: Maturation time constant in days: m(day) = 1 - exp(-day / TAU_DAYS).
TAU_DAYS = 3.0
#: Pixel size (um) at the default 64 px crop; other sizes rescale it so a cell fills the same fraction.
PX_UM_AT_64 = 0.65
WAVELENGTH_UM = 0.55
#: Cells rendered per vectorised chunk (also fixes the random streams, so keep it constant).
CHUNK = 128
_PIXEL_STREAM = 1_000_003  # seeds each chunk's noise apart from the plan/latent streams
_CONTROL_PIXEL_STREAM = 2_000_003  # the extra control cells' own (control_cells_per_group)
#: Most batches are imaged on this side of focus (dark rim, light halo, dark granules like real crops).
FOCUS_SIGN = 1.0
#: Focal-plane offsets (um) summed incoherently to mimic a partially coherent condenser.
COHERENCE_PLANES_UM = (-1.0, 1.0)
#: Segments of a process polyline (persistent random walk).
PATH_SEGMENTS = 8
MAX_PROCESSES = 8
#: Optical path (rad) of a process one pixel wide; thin neurites are faint in bright field.
PROCESS_PHASE = 0.5
#: Absorbance of granules per unit granularity: kept weak so that, after per-image normalisation,
#: a crop's mean intensity does not reveal the cell's size or class (cells are mostly phase objects).
GRANULE_ABSORPTION = 0.015
#: Optical path (rad) of the granule texture per unit granularity.
GRANULE_GAIN = 2.0

# Background level (fraction of full scale) that `confound` pulls control batches towards: real
# exports show astrocytes ~0.40 and the others ~0.59; the latter are split by +-0.02 so that, at full
# confound, brightness tells all three classes apart (a shortcut a model must not learn).
_CONFOUND_LEVEL = {"astrocyte": 0.40, "oligodendrocyte": 0.57, "neuron": 0.61}


Conditions = tuple[tuple[str, tuple[tuple[str, float], ...]], ...]


def _as_tuple(conditions: Mapping | Sequence) -> Conditions:
    """Hashable (name, ((label, proportion), ...)) tuples from a mapping or nested sequences."""
    items = conditions.items() if isinstance(conditions, Mapping) else conditions
    out = []
    for name, props in items:
        pairs = props.items() if isinstance(props, Mapping) else props
        where = f"synthetic condition {name!r}"
        out.append((str(name), tuple((canonical_label(c, where), float(p)) for c, p in pairs)))
    return tuple(out)


@dataclass(frozen=True)
class SynthSettings:
    """Everything that determines a synthetic dataset; same settings -> byte-identical output."""

    seed: int = 0
    size: int = 64
    cells_per_group: int = 100
    days: tuple[float, ...] = (1, 3, 5, 7)
    batches_per_group: int = 5
    confound: float = 1.0
    #: Scale of the inducer conditions' microscope shift (1 = as generated, 0 = imaged like control).
    inducer_shift: float = 1.0
    bit_depth: int = 8
    conditions: Conditions = _as_tuple(DEFAULT_CONDITIONS)
    #: Cultures per (class, day) in control when they should differ from ``batches_per_group``: the
    #: training data's layout changes and the inducer conditions' cells stay those of
    #: ``batches_per_group`` (same cultures, morphology and acquisition). None = ``batches_per_group``.
    control_batches_per_group: int | None = None
    #: Cells per (class, day) in control when they should differ from ``cells_per_group``: more
    #: control cultures (of the control layout's size) for larger validation and test splits, the
    #: inducer conditions' cells (and pixels) unchanged. None = ``cells_per_group``.
    control_cells_per_group: int | None = None

    def __post_init__(self) -> None:
        # Accept lists and mappings (e.g. from a Hydra config) but store hashable tuples.
        object.__setattr__(self, "days", tuple(float(d) for d in self.days))
        object.__setattr__(self, "conditions", _as_tuple(self.conditions))
        if self.seed < 0:
            raise NscfateError(f"synthetic seed must be >= 0, got {self.seed}")
        if self.size < 24:
            raise NscfateError(f"synthetic size must be >= 24 px, got {self.size}")
        if self.cells_per_group < 1 or self.batches_per_group < 1:
            raise NscfateError("synthetic cells_per_group and batches_per_group must be >= 1")
        if self.control_batches_per_group is not None and not (
            1 <= self.control_batches_per_group <= self.cells_per_group
        ):
            raise NscfateError(
                "synthetic control_batches_per_group must be null or between 1 and"
                f" cells_per_group ({self.cells_per_group}), got {self.control_batches_per_group}"
            )
        if self.control_cells_per_group is not None and not (
            (self.control_batches_per_group or self.batches_per_group)
            <= self.control_cells_per_group
        ):
            raise NscfateError(
                "synthetic control_cells_per_group must be null or at least the control cultures"
                f" per group ({self.control_batches_per_group or self.batches_per_group}),"
                f" got {self.control_cells_per_group}"
            )
        if not 0.0 <= self.confound <= 1.0:
            raise NscfateError(f"synthetic confound must be in [0, 1], got {self.confound}")
        if not 0.0 <= self.inducer_shift <= 3.0:
            raise NscfateError(
                f"synthetic inducer_shift must be in [0, 3], got {self.inducer_shift}"
            )
        if self.bit_depth not in (8, 16):
            raise NscfateError(f"synthetic bit_depth must be 8 or 16, got {self.bit_depth}")
        if not self.days or min(self.days) < 0 or len(set(self.days)) < len(self.days):
            raise NscfateError(f"synthetic days must be distinct and >= 0, got {self.days}")
        names = [name for name, _ in self.conditions]
        if CONTROL in names or len(set(names)) < len(names):
            raise NscfateError(
                f"synthetic conditions must be distinct and not {CONTROL!r}: {names}"
            )
        for name, props in self.conditions:
            values = [p for _, p in props]
            if not values or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
                raise NscfateError(
                    f"synthetic condition {name!r}: proportions must be >= 0 and sum to 1,"
                    f" got {dict(props)}"
                )

    def white_level(self) -> int:
        """Full-scale value of the stored integers: 255 (8-bit) or 4095 (12-bit in uint16)."""
        return 255 if self.bit_depth == 8 else 4095


def maturity(day: np.ndarray | float, tau: float = TAU_DAYS) -> np.ndarray:
    """Population maturity m(day) = 1 - exp(-day / tau), 0 at plating and -> 1."""
    return 1.0 - np.exp(-np.asarray(day, dtype=np.float64) / tau)


# --------------------------------------------------------------------------------------------------
# Plan: which cells exist, in which batch
# --------------------------------------------------------------------------------------------------


def _split_counts(n: int, parts: int) -> list[int]:
    return [len(a) for a in np.array_split(np.arange(n), parts)]


def _exact_counts(props: dict[str, float], n: int) -> dict[str, int]:
    """Largest-remainder rounding: counts follow the proportions and sum exactly to n."""
    raw = {c: props.get(c, 0.0) * n for c in CLASSES}
    counts = {c: int(math.floor(v)) for c, v in raw.items()}
    order = sorted(CLASSES, key=lambda c: (counts[c] - raw[c], CLASSES.index(c)))
    for c in order[: n - sum(counts.values())]:
        counts[c] += 1
    return counts


def _plan(s: SynthSettings, rng: np.random.Generator) -> pd.DataFrame:
    """One row per cell: label, day, condition, batch (cells of a batch are contiguous)."""
    rows: list[tuple[str, float, str, str]] = []
    for label in CLASSES:
        for day in s.days:
            for b, n in enumerate(_split_counts(s.cells_per_group, s.batches_per_group)):
                batch = f"{CONTROL}-{label}-d{day:g}-b{b}"
                rows += [(label, float(day), CONTROL, batch)] * n
    for name, props in s.conditions:
        for day in s.days:
            counts = _exact_counts(dict(props), s.cells_per_group)
            labels = np.repeat(list(CLASSES), [counts[c] for c in CLASSES])
            labels = labels[rng.permutation(len(labels))]
            parts = np.array_split(labels, s.batches_per_group)
            for b, part in enumerate(parts):
                batch = f"{name}-d{day:g}-b{b}"
                rows += [(str(label), float(day), name, batch) for label in part]
    return pd.DataFrame(rows, columns=["label", "day", "condition", "batch"])


# --------------------------------------------------------------------------------------------------
# Acquisition: one draw per batch (level, gain, focus, optics, camera)
# --------------------------------------------------------------------------------------------------


def _acquisition(plan: pd.DataFrame, s: SynthSettings, rng: np.random.Generator) -> pd.DataFrame:
    """Per-batch acquisition parameters broadcast to cells, plus per-cell focus jitter."""
    first = plan.drop_duplicates("batch")
    nb = len(first)
    inducer = (first["condition"] != CONTROL).to_numpy()
    neutral = rng.uniform(0.42, 0.66, nb)
    target = first["label"].map(_CONFOUND_LEVEL).to_numpy() + rng.normal(0, 0.015, nb)
    level = np.where(inducer, neutral + 0.03, (1 - s.confound) * neutral + s.confound * target)
    # Mild microscope shift for the independent conditions: more defocus, lower NA, noisier camera.
    shift = inducer.astype(np.float64) * s.inducer_shift
    sign = np.where(rng.random(nb) < 0.85, FOCUS_SIGN, -FOCUS_SIGN)
    batch = pd.DataFrame(
        {
            "level": level,
            "gain": level * rng.uniform(0.6, 1.0, nb),
            "defocus_um": sign * (rng.uniform(2.0, 5.0, nb) + 1.0 * shift),
            "na": rng.uniform(0.36, 0.46, nb) - 0.03 * shift,
            "full_well": rng.uniform(8000, 30000, nb) * (1 - 0.3 * shift),
            "read_noise": rng.uniform(0.0015, 0.004, nb),
            "gradient_x": rng.normal(0, 0.02, nb),
            "gradient_y": rng.normal(0, 0.02, nb),
            # Flow-camera sync mismatch stretches cells along the flow (image y) axis.
            "stretch": rng.uniform(1.0, 1.35, nb),
        },
        index=first["batch"].to_numpy(),
    )
    cells = batch.loc[plan["batch"].to_numpy()].reset_index(drop=True)
    n = len(plan)
    # Per-cell focus scatter in the flow, plus a few strongly defocused cells.
    far = rng.random(n) < 0.05
    cells["defocus_um"] += rng.normal(0, 0.8, n) + far * rng.choice([-1, 1], n) * rng.uniform(
        6, 12, n
    )
    return cells


# --------------------------------------------------------------------------------------------------
# Latent morphology
# --------------------------------------------------------------------------------------------------

# trait: (NSC baseline, {class: value at m = 1}, within-class sd). The sds set the difficulty: the
# latent oracle is ~0.75 at day 1 (m = 0.28) and ~0.99 at day 7 (m = 0.90).
_TRAITS: dict[str, tuple[float, dict[str, float], float]] = {
    "radius_um": (4.8, {"astrocyte": 6.2, "oligodendrocyte": 4.9, "neuron": 3.7}, 0.65),
    "elongation": (0.18, {"astrocyte": 0.22, "oligodendrocyte": 0.12, "neuron": 0.35}, 0.12),
    "irregularity": (0.05, {"astrocyte": 0.15, "oligodendrocyte": 0.07, "neuron": 0.04}, 0.035),
    "phase_height": (1.3, {"astrocyte": 0.75, "oligodendrocyte": 1.35, "neuron": 1.7}, 0.3),
    "flatness": (0.5, {"astrocyte": 0.3, "oligodendrocyte": 0.5, "neuron": 0.65}, 0.1),
    "granularity": (0.22, {"astrocyte": 0.1, "oligodendrocyte": 0.55, "neuron": 0.18}, 0.1),
    "nucleus_fraction": (0.55, {"astrocyte": 0.45, "oligodendrocyte": 0.55, "neuron": 0.65}, 0.07),
    "nucleus_offset": (0.15, {"astrocyte": 0.15, "oligodendrocyte": 0.15, "neuron": 0.25}, 0.085),
    "absorption": (0.006, {"astrocyte": 0.005, "oligodendrocyte": 0.008, "neuron": 0.006}, 0.002),
}
# process count ~ Binomial(MAX_PROCESSES, p); p and mean length diverge like the traits above
_PROCESS_P = (0.05, {"astrocyte": 0.05, "oligodendrocyte": 0.6, "neuron": 0.25})
_PROCESS_LENGTH_UM = (1.5, {"astrocyte": 2.0, "oligodendrocyte": 3.5, "neuron": 6.0})
_PROCESS_WIDTH_UM = (0.7, {"astrocyte": 0.9, "oligodendrocyte": 0.45, "neuron": 0.7})
_PROCESS_WIGGLE = (0.25, {"astrocyte": 0.3, "oligodendrocyte": 0.4, "neuron": 0.1})


def _diverge(spec: tuple[float, dict[str, float]], labels: np.ndarray, s: np.ndarray) -> np.ndarray:
    base, target = spec
    goal = np.array([target[c] for c in CLASSES])[labels]
    return base + s * (goal - base)


def _latents(plan: pd.DataFrame, rng: np.random.Generator) -> dict[str, Any]:
    """Per-cell morphology: the stored lat_* scalars plus the drawing details (harmonics, paths)."""
    n = len(plan)
    labels = pd.Categorical(plan["label"], categories=CLASSES).codes.astype(np.int64)
    # Cultures mature at slightly different speeds, cells within a culture more so.
    culture, codes = np.unique(plan["batch"].to_numpy(), return_inverse=True)
    pace = rng.lognormal(0, 0.08, len(culture))[codes]
    m = np.clip(maturity(plan["day"].to_numpy()) * pace * rng.lognormal(0, 0.2, n), 0, 1)
    s = m  # class traits move linearly from the NSC baseline to the mature value
    lat: dict[str, np.ndarray] = {"maturity": m}
    for name, (base, target, sd) in _TRAITS.items():
        lat[name] = _diverge((base, target), labels, s) + rng.normal(0, sd, n)
    lat["radius_um"] = np.clip(lat["radius_um"], 3.0, 11.0)
    lat["elongation"] = np.clip(lat["elongation"], 0.0, 0.8)
    lat["irregularity"] = np.clip(lat["irregularity"], 0.0, 0.3)
    lat["phase_height"] = np.clip(lat["phase_height"], 0.3, 3.0)
    lat["flatness"] = np.clip(lat["flatness"], 0.15, 1.2)
    lat["granularity"] = np.clip(lat["granularity"], 0.0, 1.0)
    lat["nucleus_fraction"] = np.clip(lat["nucleus_fraction"], 0.3, 0.8)
    lat["nucleus_offset"] = np.clip(lat["nucleus_offset"], 0.0, 0.45)
    lat["absorption"] = np.clip(lat["absorption"], 0.0, 0.1)
    lat["rotation"] = rng.uniform(0, np.pi, n)
    lat["doublet"] = (rng.random(n) < 0.05).astype(np.float64)
    lat["n_debris"] = rng.poisson(0.4, n).astype(np.float64)
    p = np.clip(_diverge(_PROCESS_P, labels, s), 0, 1)
    n_proc = rng.binomial(MAX_PROCESSES, p)
    length = _diverge(_PROCESS_LENGTH_UM, labels, s) * rng.lognormal(0, 0.25, n)
    width = _diverge(_PROCESS_WIDTH_UM, labels, s) * rng.lognormal(0, 0.15, n)
    wiggle = _diverge(_PROCESS_WIGGLE, labels, s)
    extra = {
        "labels": labels,
        "n_proc": n_proc,
        "proc_length_um": length,
        "proc_width_um": width,
        "proc_wiggle": wiggle,
        "harmonics": rng.normal(0, 1, (n, 4)) / np.sqrt(np.arange(1, 5)),
        "harmonic_phase": rng.uniform(0, 2 * np.pi, (n, 4)),
        "nucleus_angle": rng.uniform(0, 2 * np.pi, n),
        "shift_um": rng.normal(0, 1.0, (n, 2)),
        "granule_um": rng.uniform(0.45, 0.8, n),
    }
    return {"lat": lat, **extra}


# --------------------------------------------------------------------------------------------------
# Geometry: process paths (vectorised over all cells), with their rendered length
# --------------------------------------------------------------------------------------------------


def _paths(
    cells: dict[str, Any], size: int, px_um: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Polylines (n, MAX_PROCESSES, PATH_SEGMENTS+1, 2) in px and the visible length per process.

    Each process is a persistent random walk starting inside the soma (hidden under it); it stops
    before the crop margin so the FFT never wraps it round to the other side.
    """
    lat = cells["lat"]
    n = len(lat["radius_um"])
    P, K = MAX_PROCESSES, PATH_SEGMENTS
    centre = (size - 1) / 2 + cells["shift_um"] / px_um
    heading = rng.uniform(0, 2 * np.pi, (n, P))
    # Neurons tend to be bipolar: the second process points roughly away from the first.
    heading[:, 1] = np.where(
        cells["labels"] == CLASSES.index("neuron"),
        heading[:, 0] + np.pi + rng.normal(0, 0.5, n),
        heading[:, 1],
    )
    r_edge = _ellipse_radius(heading, lat, px_um)
    length = cells["proc_length_um"][:, None] / px_um * rng.lognormal(0, 0.3, (n, P))
    length[:, 0] *= 1.3  # the longest process (axon-like for neurons)
    step = (length + 0.3 * r_edge) / K
    turns = rng.normal(0, 1, (n, P, K)) * cells["proc_wiggle"][:, None, None]
    angle = heading[..., None] + np.cumsum(turns, axis=-1)
    start = centre[:, None, :] + 0.7 * r_edge[..., None] * np.stack(
        [np.cos(heading), np.sin(heading)], -1
    )
    steps = step[..., None, None] * np.stack([np.cos(angle), np.sin(angle)], -1)
    pts = np.concatenate([start[:, :, None, :], start[:, :, None, :] + np.cumsum(steps, 2)], 2)
    cy = centre[:, 1, None, None]
    pts[..., 1] = cy + (pts[..., 1] - cy) * cells["stretch"][:, None, None]
    margin = max(3.0, 0.08 * size)
    inside = np.all((pts >= margin) & (pts <= size - 1 - margin), axis=-1)
    valid = np.cumprod(inside, axis=-1).sum(-1)  # points before first exit
    visible = np.clip((valid - 1) * step - 0.3 * r_edge, 0, None)
    visible[np.arange(P)[None, :] >= cells["n_proc"][:, None]] = 0
    # Collapse points past the exit onto the last valid one (zero-length tail).
    last = np.clip(valid - 1, 0, K)
    idx = np.minimum(np.arange(K + 1)[None, None, :], last[..., None])
    pts = np.take_along_axis(pts, idx[..., None].repeat(2, -1), axis=2)
    return pts.astype(np.float32), visible * px_um


def _ellipse_radius(angle: np.ndarray, lat: dict[str, np.ndarray], px_um: float) -> np.ndarray:
    aspect = 1 + lat["elongation"][:, None]
    r = lat["radius_um"][:, None] / px_um
    a, b = r * np.sqrt(aspect), r / np.sqrt(aspect)
    t = angle - lat["rotation"][:, None]
    return 1 / np.sqrt((np.cos(t) / a) ** 2 + (np.sin(t) / b) ** 2)


# --------------------------------------------------------------------------------------------------
# Rendering: phase/absorption maps -> defocused bright-field pupil -> camera
# --------------------------------------------------------------------------------------------------


class _Optics:
    """Grids shared by every chunk of one crop size."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.px_um = PX_UM_AT_64 * 64 / size
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        self.x, self.y = xx, yy
        f = np.fft.fftfreq(size, d=self.px_um).astype(np.float32)
        self.f2 = (f[:, None] ** 2 + f[None, :] ** 2).astype(np.float32)  # cycles^2/um^2
        self.f = np.sqrt(self.f2)
        fr = np.fft.rfftfreq(size, d=self.px_um).astype(np.float32)
        self.f2r = (f[:, None] ** 2 + fr[None, :] ** 2).astype(np.float32)
        self.ramp = ((np.arange(size, dtype=np.float32) - (size - 1) / 2) / size).astype(np.float32)


def _col(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)[:, None, None]


def _body(
    o: _Optics, cx: np.ndarray, cy: np.ndarray, cells: dict[str, Any], sel: Any, scale: float = 1.0
) -> np.ndarray:
    """Normalised radius rho (< 1 inside) of each selected cell's contour (sel: slice or indices)."""
    lat = cells["lat"]
    rot = lat["rotation"][sel]
    aspect = np.sqrt(1 + lat["elongation"][sel])
    r_px = lat["radius_um"][sel] / o.px_um * scale
    dx = o.x[None] - _col(cx)
    dy = (o.y[None] - _col(cy)) / _col(cells["stretch"][sel])
    c, s = _col(np.cos(rot)), _col(np.sin(rot))
    u = (dx * c + dy * s) / _col(aspect)
    v = (dy * c - dx * s) * _col(aspect)
    theta = np.arctan2(v, u)
    wobble = np.zeros_like(theta)
    amp = cells["harmonics"][sel] * lat["irregularity"][sel, None]
    ph = cells["harmonic_phase"][sel]
    for k in range(4):
        wobble += _col(amp[:, k]) * np.cos((k + 2) * theta + _col(ph[:, k]))
    # floor keeps rare extreme harmonics from folding the contour inside out
    return np.sqrt(u * u + v * v) / (_col(r_px) * np.maximum(1 + wobble, 0.3))


def _texture(o: _Optics, sigma_um: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance granular texture: white noise low-passed at each cell's granule size."""
    import scipy.fft as sfft

    n, size = len(sigma_um), o.size
    noise = rng.random((n, size, size), dtype=np.float32)
    spec = sfft.rfft2(noise, workers=1)
    spec *= np.exp(o.f2r[None] * _col(-2 * np.pi**2 * sigma_um**2))
    spec[:, 0, 0] = 0
    tex = sfft.irfft2(spec, s=(size, size), workers=1)
    tex /= tex.std(axis=(1, 2), keepdims=True) + 1e-6
    return tex


def _draw_processes(
    pts: np.ndarray, n_proc: np.ndarray, width_px: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """Tapered processes as anti-aliased polylines (uint8 coverage -> float in [0, 1])."""
    import cv2

    canvas = np.zeros((len(pts), *shape), dtype=np.uint8)
    fixed = np.round(pts * 16).astype(np.int32)  # 4 fractional bits (shift=4)
    thirds = (slice(0, 4), slice(3, 7), slice(6, PATH_SEGMENTS + 1))
    for i in np.flatnonzero(n_proc):
        paths = fixed[i, : n_proc[i]]
        w = width_px[i]
        for j, part in enumerate(thirds):
            thick = max(1, int(round(w * (1 - 0.3 * j))))
            value = int(255 * min(1.0, w * (1 - 0.25 * j)))
            cv2.polylines(canvas[i], list(paths[:, part]), False, value, thick, cv2.LINE_AA, 4)
    return canvas.astype(np.float32) * np.float32(1 / 255)


def _draw_debris(n_debris: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Small dead-cell fragments anywhere in the crop (coverage in [0, 1])."""
    import cv2

    phase = np.zeros((len(n_debris), size, size), dtype=np.uint8)
    for i in np.flatnonzero(n_debris):
        for _ in range(int(n_debris[i])):
            xy = tuple(int(v) for v in rng.uniform(0.1, 0.9, 2) * size * 16)
            rad = int(rng.uniform(0.4, 1.5) * size / 64 * 16)
            cv2.circle(phase[i], xy, rad, int(rng.integers(80, 255)), -1, cv2.LINE_AA, 4)
    return phase.astype(np.float32) * np.float32(1 / 255)


def _phase_maps(
    o: _Optics, cells: dict[str, Any], pts: np.ndarray, sel: slice, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Optical path (rad) and absorption maps of one chunk of cells."""
    lat = cells["lat"]
    centre = (o.size - 1) / 2 + cells["shift_um"][sel] / o.px_um
    cx, cy = centre[:, 0], centre[:, 1]
    rho = _body(o, cx, cy, cells, sel)
    h = _col(lat["phase_height"][sel])
    dome = np.maximum(1 - rho * rho, 0)
    # dome**flatness via exp/log: numpy's float32 power is slow on the many zeros outside the cell
    profile = np.exp(_col(lat["flatness"][sel]) * np.log(np.maximum(dome, 1e-30)))
    # Nucleus: a denser, smoother disc offset from the centre.
    off = lat["nucleus_offset"][sel] * lat["radius_um"][sel] / o.px_um
    ang = cells["nucleus_angle"][sel]
    nr = _col(lat["nucleus_fraction"][sel] * lat["radius_um"][sel] / o.px_um)
    ndx = o.x[None] - _col(cx + off * np.cos(ang))
    ndy = (o.y[None] - _col(cy + off * np.sin(ang))) / _col(cells["stretch"][sel])
    nuc = np.sqrt(np.maximum(1 - (ndx * ndx + ndy * ndy) / (nr * nr), 0))
    nuc *= np.sqrt(nuc) * (dome > 0)  # profile (1 - r^2)^0.75, clipped to the cell
    tex = _texture(o, cells["granule_um"][sel], rng)
    # organelles are denser than cytosol: positive bumps only, which defocus renders as dark granules
    gran = _col(lat["granularity"][sel]) * np.maximum(tex, 0) * np.sqrt(dome) * (1 - 0.7 * nuc)
    gran *= np.float32(GRANULE_GAIN)
    phi = h * (profile + 0.25 * nuc) + gran
    proc = _draw_processes(
        pts[sel], cells["n_proc"][sel], cells["proc_width_um"][sel] / o.px_um, (o.size, o.size)
    )
    phi = np.maximum(phi, PROCESS_PHASE * proc)
    # Dividing doublets: a slightly smaller sister cell touching the first.
    pair = np.flatnonzero(lat["doublet"][sel])
    if len(pair):
        rows = sel.start + pair
        ang2 = cells["nucleus_angle"][rows] + np.pi
        dist = 1.6 * lat["radius_um"][rows] / o.px_um
        dy2 = dist * np.sin(ang2) * cells["stretch"][rows]
        rho2 = _body(o, cx[pair] + dist * np.cos(ang2), cy[pair] + dy2, cells, rows, 0.85)
        phi[pair] = np.maximum(phi[pair], h[pair] * np.sqrt(np.maximum(1 - rho2 * rho2, 0)))
    debris = _draw_debris(lat["n_debris"][sel], o.size, rng)
    phi += 1.2 * debris
    # Absorbance follows dry mass, i.e. optical path: thin flat cells also absorb little.
    ab = np.maximum(phi, 0) * _col(lat["absorption"][sel]) + 0.15 * debris
    ab += GRANULE_ABSORPTION * _col(lat["granularity"][sel]) * np.maximum(tex, 0) * (dome > 0)
    return phi, ab


def _image(o: _Optics, phi: np.ndarray, ab: np.ndarray, acq: dict[str, np.ndarray]) -> np.ndarray:
    """Bright-field intensity (1 = background) through each cell's defocused pupil."""
    import scipy.fft as sfft

    amp = np.exp(-ab)
    field = np.empty(phi.shape, dtype=np.complex64)
    field.real = amp * np.cos(phi)
    field.imag = amp * np.sin(phi)
    spec = sfft.fft2(field, workers=1)
    cutoff = _col(acq["na"] / WAVELENGTH_UM)
    pupil = np.clip((cutoff - o.f[None]) / (0.15 * cutoff) + 0.5, 0, 1)
    dz = _col(acq["defocus_um"])
    # Partial coherence: incoherent sum over focal planes spread by the condenser aperture.
    intensity = np.zeros(phi.shape, dtype=np.float32)
    for dz_k in COHERENCE_PLANES_UM:
        arg = np.float32(np.pi * WAVELENGTH_UM) * (dz + np.float32(dz_k)) * o.f2[None]
        kernel = np.empty(spec.shape, dtype=np.complex64)
        kernel.real = pupil * np.cos(arg)
        kernel.imag = pupil * np.sin(arg)
        out = sfft.ifft2(spec * kernel, workers=1, overwrite_x=True)
        intensity += out.real**2 + out.imag**2
    return intensity * np.float32(1 / len(COHERENCE_PLANES_UM))


def _normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 by Box-Muller: ~3x faster than Generator.standard_normal here."""
    n = math.prod(shape)
    half = (n + 1) // 2
    radius = np.sqrt(-2 * np.log1p(-rng.random(half, dtype=np.float32)))
    turn = np.float32(2 * np.pi) * rng.random(half, dtype=np.float32)
    out = np.empty(2 * half, dtype=np.float32)
    np.multiply(radius, np.cos(turn), out=out[:half])
    np.multiply(radius, np.sin(turn), out=out[half:])
    return out[:n].reshape(shape)


def _camera(
    o: _Optics,
    intensity: np.ndarray,
    acq: dict[str, np.ndarray],
    s: SynthSettings,
    rng: np.random.Generator,
) -> np.ndarray:
    """Illumination gradient, batch level and gain, shot + read noise, quantisation.

    ``acq`` holds this chunk's per-cell acquisition arrays. Shot noise uses the Gaussian limit of
    the Poisson law (thousands of electrons per pixel).
    """
    ramp = o.ramp
    signal = intensity
    signal *= (
        1
        + _col(acq["gradient_x"]) * ramp[None, None, :]
        + _col(acq["gradient_y"]) * ramp[None, :, None]
    )
    gain = _col(acq["gain"])
    var = (
        np.maximum(signal, 0) * (gain * gain / _col(acq["full_well"]))
        + _col(acq["read_noise"]) ** 2
    )
    value = signal - 1
    value *= gain
    value += _col(acq["level"]) + np.sqrt(var) * _normal(rng, signal.shape)
    if s.bit_depth == 8:
        return np.clip(np.rint(value * 255), 0, 255).astype(np.uint8)
    return np.clip(np.rint(100 + value * 3995), 0, 4095).astype(np.uint16)


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def generate(settings: SynthSettings, progress: bool = False) -> tuple[np.ndarray, pd.DataFrame]:
    """Render the synthetic dataset described by ``settings``.

    Returns ``images`` (N x size x size, uint8 for 8-bit or uint16 holding 12-bit data) and the
    index (one row per cell, same order): label, day, condition, batch, source, then the latent
    morphology ``lat_*`` and acquisition ``acq_*`` columns.
    """
    s = settings
    parts = _parts(s)
    o = _Optics(s.size)
    n = sum(part.rows.stop - part.rows.start for part in parts)
    dtype = np.uint8 if s.bit_depth == 8 else np.uint16
    images = np.empty((n, s.size, s.size), dtype=dtype)
    bar = _progress(n, progress)
    at = 0
    for part in parts:
        for pixels in _render(o, part, s):
            images[at : at + len(pixels)] = pixels
            at += len(pixels)
            if bar is not None:
                bar.update(len(pixels))
    if bar is not None:
        bar.close()
    plan, acq, cells, _ = _stacked(parts)
    return images, _index(plan, acq, cells["lat"], s)


def describe(settings: SynthSettings) -> pd.DataFrame:
    """The index :func:`generate` returns (labels, cultures, latents, acquisition) without rendering
    a pixel: what the latent oracle and the generator's own checks need, in a fraction of the time."""
    plan, acq, cells, _ = _describe(settings)
    return _index(plan, acq, cells["lat"], settings)


Description = tuple[pd.DataFrame, pd.DataFrame, dict[str, Any], np.ndarray]


@dataclass(frozen=True)
class _Part:
    """Rows ``rows`` of a description, rendered with the pixel random stream ``stream``."""

    description: Description
    rows: slice
    stream: int


def _describe(s: SynthSettings) -> Description:
    """Everything but the pixels: plan, acquisition, latents and process paths of every cell."""
    return _stacked(_parts(s))


def _parts(s: SynthSettings) -> list[_Part]:
    """The dataset as parts of whole layouts, each rendered with its own chunks.

    With ``control_batches_per_group`` the control rows (which come first) are described with that
    layout and the inducer rows exactly as with ``batches_per_group``, so changing the training
    data's cultures leaves the inducer conditions' cells as they were. With
    ``control_cells_per_group`` the control rows come from a control-only layout of that size
    (its own pixel stream) and the inducer rows are rendered from the dataset without it, chunk
    by chunk as there, so their pixels too stay as they were.
    """
    n = len(CLASSES) * len(s.days) * s.cells_per_group  # control rows of the base layout
    if s.control_batches_per_group in (None, s.batches_per_group):
        base = _describe_layout(replace(s, control_batches_per_group=None))
    else:
        control = _describe_layout(
            replace(
                s, batches_per_group=s.control_batches_per_group, control_batches_per_group=None
            )
        )
        inducers = _describe_layout(replace(s, control_batches_per_group=None))
        base = _stack_rows(control, slice(0, n), inducers, slice(n, len(inducers[0])))
    if s.control_cells_per_group in (None, s.cells_per_group):
        return [_Part(base, slice(0, len(base[0])), _PIXEL_STREAM)]
    control_only = replace(
        s,
        cells_per_group=s.control_cells_per_group,
        batches_per_group=s.control_batches_per_group or s.batches_per_group,
        control_batches_per_group=None,
        control_cells_per_group=None,
        conditions=(),
    )
    head = _describe_layout(control_only)
    return [
        _Part(head, slice(0, len(head[0])), _CONTROL_PIXEL_STREAM),
        _Part(base, slice(n, len(base[0])), _PIXEL_STREAM),
    ]


def _stacked(parts: list[_Part]) -> Description:
    """The parts' rows, one after the other, as one description (the first part is a whole
    layout: :func:`_parts`)."""
    out = parts[0].description
    for part in parts[1:]:
        out = _stack_rows(out, slice(None), part.description, part.rows)
    return out


def _stack_rows(
    head: Description, head_rows: slice, tail: Description, tail_rows: slice
) -> Description:
    """Rows ``head_rows`` of ``head`` followed by rows ``tail_rows`` of ``tail``."""

    def stack(a: Any, b: Any) -> Any:
        if isinstance(a, dict):
            return {k: stack(a[k], b[k]) for k in a}
        if isinstance(a, pd.DataFrame):
            return pd.concat([a.iloc[head_rows], b.iloc[tail_rows]], ignore_index=True)
        return np.concatenate([a[head_rows], b[tail_rows]])

    return tuple(stack(a, b) for a, b in zip(head, tail, strict=True))  # type: ignore[return-value]


def _render(o: _Optics, part: _Part, s: SynthSettings) -> Iterator[np.ndarray]:
    """The pixels of ``part``'s rows, chunk by chunk of its whole description: a chunk's random
    stream is fixed by its number, so rows render as they would in the whole layout."""
    plan, acq, cells, pts = part.description
    columns = {k: acq[k].to_numpy() for k in acq.columns}
    first, stop = part.rows.start // CHUNK, part.rows.stop
    for number in range(first, -(-stop // CHUNK)):
        sel = slice(number * CHUNK, min(len(plan), (number + 1) * CHUNK))
        rng = np.random.default_rng([s.seed, part.stream, number])
        phi, ab = _phase_maps(o, cells, pts, sel, rng)
        chunk = {name: values[sel] for name, values in columns.items()}
        pixels = _camera(o, _image(o, phi, ab, chunk), chunk, s, rng)
        keep = slice(max(sel.start, part.rows.start), min(sel.stop, stop))
        yield pixels[keep.start - sel.start : keep.stop - sel.start]


def _describe_layout(s: SynthSettings) -> Description:
    """One layout (``batches_per_group`` cultures for every group) from the settings' seed."""
    root = np.random.SeedSequence(s.seed)
    plan_rng, acq_rng, lat_rng, path_rng = (np.random.default_rng(c) for c in root.spawn(4))
    plan = _plan(s, plan_rng)
    acq = _acquisition(plan, s, acq_rng)
    cells = _latents(plan, lat_rng)
    cells["stretch"] = acq["stretch"].to_numpy()
    pts, visible_um = _paths(cells, s.size, PX_UM_AT_64 * 64 / s.size, path_rng)
    lat = cells["lat"]
    shown = visible_um > 0
    lat["n_processes"] = shown.sum(1).astype(np.float64)
    lat["process_length_um"] = np.where(
        shown.any(1), visible_um.sum(1) / np.maximum(shown.sum(1), 1), 0.0
    )
    lat["process_width_um"] = np.where(shown.any(1), cells["proc_width_um"], 0.0)
    cells["n_proc"] = np.where(shown.any(1), cells["n_proc"], 0)
    return plan, acq, cells, pts


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="synthetic cells", unit="cell", file=sys.stderr)


def _index(
    plan: pd.DataFrame, acq: pd.DataFrame, lat: dict[str, np.ndarray], s: SynthSettings
) -> pd.DataFrame:
    source = [f"synthetic:seed={s.seed}:cell={i}" for i in range(len(plan))]
    columns: dict[str, Any] = {c: plan[c].to_numpy() for c in plan.columns} | {"source": source}
    columns |= {LATENT_PREFIX + k: np.asarray(lat[k], dtype=np.float64) for k in sorted(lat)}
    columns |= {ACQUISITION_PREFIX + k: acq[k].to_numpy(dtype=np.float64) for k in acq.columns}
    return pd.DataFrame(columns)
