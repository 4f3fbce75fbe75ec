"""The vocabulary every part of nscfate shares: fate classes and the per-cell index columns."""

from __future__ import annotations

from nscfate.errors import NscfateError

#: Fate classes in the order of the paper's released model (0 = astrocyte, 1 = oligodendrocyte,
#: 2 = neuron). A model's output column k is the probability of CLASSES[k].
CLASSES: tuple[str, ...] = ("astrocyte", "oligodendrocyte", "neuron")

#: Columns every dataset-store index has, one row per cell.
REQUIRED_COLUMNS: tuple[str, ...] = ("label", "day", "condition", "batch", "source")

#: Prefix of the synthetic generator's latent morphology columns (what the oracle may read).
LATENT_PREFIX = "lat_"
#: Prefix of the synthetic generator's acquisition columns (batch level, gain, focus, noise).
ACQUISITION_PREFIX = "acq_"

#: Condition name of the directed-differentiation training cultures.
CONTROL = "control"

_ALIASES = {
    "astrocyte": "astrocyte",
    "astrocytes": "astrocyte",
    "astro": "astrocyte",
    "a": "astrocyte",
    "oligodendrocyte": "oligodendrocyte",
    "oligodendrocytes": "oligodendrocyte",
    "oligo": "oligodendrocyte",
    "o": "oligodendrocyte",
    "neuron": "neuron",
    "neurons": "neuron",
    "n": "neuron",
    "0": "astrocyte",
    "1": "oligodendrocyte",
    "2": "neuron",
}


def canonical_label(name: object, where: str = "") -> str:
    """Map a class name or alias (``astro``, ``a``, ``Neurons``, ``2``) to its canonical name.

    Raises NscfateError naming ``where`` (a file or row) when the name is not a known fate.
    """
    key = str(name).strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    at = f" in {where}" if where else ""
    raise NscfateError(
        f"unknown class name {str(name)!r}{at}: expected one of {', '.join(CLASSES)}"
        " (or an alias: astro/a, oligo/o, n, 0/1/2)"
    )
