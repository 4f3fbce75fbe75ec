"""The built-in synthetic dataset as a store: settings from config, a stable folder name, generation.

Kept apart from the generator (pure numpy) and the datamodule (torch/Lightning) so that
``nscfate-data synth`` starts fast.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nscfate.data.store import (
    DatasetStore,
    check_out,
    is_store,
    open_store,
    store_lock,
    write_store,
)
from nscfate.errors import NscfateError

#: Generator settings added after stores were first cached, with the default that reproduces them.
ADDED_LATER = {
    "inducer_shift": 1.0,
    "control_batches_per_group": None,
    "control_cells_per_group": None,
}


def synthetic_slug(settings: Mapping[str, Any]) -> str:
    """A folder name that changes whenever the generator or its settings change."""
    from nscfate.data.synthetic import GENERATOR_VERSION

    full = asdict(synth_settings(settings))
    for key, default in ADDED_LATER.items():  # stores made before a setting existed keep their name
        if full[key] == default:
            del full[key]
    key = json.dumps({"v": GENERATOR_VERSION, **full}, sort_keys=True, default=str)
    short = hashlib.sha256(key.encode()).hexdigest()[:10]
    return f"synthetic-seed{full['seed']}-k{full['cells_per_group']}-{full['size']}px-{short}"


def generate_synthetic_store(
    settings: Mapping[str, Any],
    out: Path,
    progress: bool = True,
    overwrite: bool = False,
    reuse_existing: bool = False,
) -> DatasetStore:
    """Generate a synthetic dataset and write it as a store at ``out``.

    With ``reuse_existing`` a store at ``out`` is opened instead, after waiting for a process that
    is writing it (several sweep workers may start on a fresh machine at once); without it, another
    writer of ``out`` is a one-line error.
    """
    from nscfate.data.synthetic import GENERATOR_VERSION, generate

    synth = synth_settings(settings)
    # Sweep workers starting together wait for the first to finish, then reuse its store.
    with store_lock(out, reuse=reuse_existing):
        if reuse_existing and is_store(out):
            return open_store(out)
        check_out(out, overwrite)
        images, index = generate(synth, progress=progress)
        provenance = {
            "generator": "nscfate.data.synthetic",
            "generator_version": GENERATOR_VERSION,
            "settings": asdict(synth),
        }
        return write_store(out, images, index, provenance, synth.white_level(), overwrite=overwrite)


def synth_settings(settings: Mapping[str, Any]) -> Any:
    """Build a ``SynthSettings`` from a config mapping, rejecting unknown keys by name."""
    from nscfate.data.synthetic import SynthSettings

    fields = SynthSettings.__dataclass_fields__
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise NscfateError(
            f"unknown data.synthetic key(s) {unknown}: expected some of {sorted(fields)}"
        )
    values = dict(settings)
    if "days" in values:
        values["days"] = tuple(float(d) for d in values["days"])
    if isinstance(values.get("conditions"), Mapping):
        values["conditions"] = tuple(
            (name, tuple((k, float(v)) for k, v in props.items()))
            for name, props in values["conditions"].items()
        )
    return SynthSettings(**values)
