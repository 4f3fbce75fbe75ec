"""Evaluate a saved checkpoint on its own: it carries the run's resolved config.

A checkpoint is data, never code: it is read with ``torch.load(weights_only=True)`` (a pickled
object in it is refused before anything runs), and the config inside it only supplies values to
nscfate's own builders (``OWN_BUILDERS``): a ``_target_`` naming anything else is refused.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from nscfate.data.datamodule import CellDataModule
from nscfate.errors import NscfateError
from nscfate.estimation import ESTIMATION_KEY, EstimationSettings, FateEstimator
from nscfate.evaluation.evaluate import Evaluation, evaluate, fit_estimator_on
from nscfate.models import create_model

#: The builders a config stored in a checkpoint may name, by config node.
OWN_BUILDERS = {
    "model": "nscfate.models.create_model",
    "data": "nscfate.data.datamodule.CellDataModule",
}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a Lightning checkpoint written by nscfate (it must hold ``nscfate_config``)."""
    path = Path(path)
    if not path.is_file():
        raise NscfateError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "unsupported global" not in str(err).lower():  # not an object that would run: junk
            raise NscfateError(f"checkpoint {path} is unreadable: {err}") from err
        raise NscfateError(
            f"checkpoint {path} holds more than weights and plain data (a pickled object): "
            "refused, nothing in it was run"
        ) from err
    except Exception as err:
        raise NscfateError(f"checkpoint {path} is unreadable: {err}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or not ckpt.get("nscfate_config"):
        raise NscfateError(f"{path} is not an nscfate checkpoint (no state_dict/nscfate_config)")
    return ckpt


def own_values(node: DictConfig, key: str, path: str | Path) -> dict[str, Any]:
    """The values of a stored config node for nscfate's own builder of ``key``; a ``_target_``
    that names anything else is refused (building it could run any code)."""
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    if not isinstance(values, dict):
        raise NscfateError(f"checkpoint {path}: its config has no {key} mapping")
    target = values.get("_target_")
    if target != OWN_BUILDERS[key]:
        raise NscfateError(
            f"checkpoint {path}: {key}._target_={target!r} is not nscfate's own builder "
            f"({OWN_BUILDERS[key]}): refused, nothing was built"
        )
    return {k: v for k, v in values.items() if not k.startswith("_")}


@dataclass
class Rebuilt:
    """A checkpoint's network (weights loaded), its data set up for evaluation, and the checkpoint
    with the run's config."""

    net: torch.nn.Module
    model_values: dict[str, Any]
    datamodule: CellDataModule
    ckpt: dict[str, Any]
    run_cfg: DictConfig


def rebuild(
    path: str | Path, model: DictConfig | None = None, data: DictConfig | None = None
) -> Rebuilt:
    """Rebuild the run's network and data (or the given ``data``) and load the weights.

    ``model`` is a check, not a replacement: asking for an architecture other than the one in the
    checkpoint is an error naming both.
    """
    ckpt = load_checkpoint(path)
    run_cfg = OmegaConf.create(ckpt["nscfate_config"])
    data = data if data is not None else run_cfg.get("data")
    # Both checked before anything is built; pretrained weights would only be overwritten by the
    # checkpoint's (and need the internet). The network sees crops as it was trained (checkpoints
    # older than pad_to_square: unpadded).
    net_values = own_values(run_cfg.get("model"), "model", path) | {"pretrained": False}
    data_values = own_values(data, "data", path)
    data_values["pad_to_square"] = (run_cfg.get("data") or {}).get("pad_to_square", False)
    if model is not None and model.get("name") != net_values.get("name"):
        raise NscfateError(
            f"checkpoint {path} holds a {net_values.get('name')!r} network, not "
            f"model={model.get('name')!r}"
        )
    net = create_model(**net_values)
    try:
        net.load_state_dict(network_weights(ckpt["state_dict"]))
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise NscfateError(
            f"checkpoint {path} does not fit model {net_values.get('name')!r}: {first}"
        ) from err
    datamodule = CellDataModule(**data_values)
    datamodule.prepare_data()
    datamodule.setup("test")
    return Rebuilt(net, net_values, datamodule, ckpt, run_cfg)


def evaluate_checkpoint(
    path: str | Path, model: DictConfig | None = None, data: DictConfig | None = None
) -> tuple[Evaluation, DictConfig]:
    """Rebuild the run (:func:`rebuild`) and evaluate it with its saved calibration."""
    r = rebuild(path, model, data)
    estimator = checkpoint_estimator(r.ckpt, r.net, r.datamodule)
    return evaluate(r.net, r.datamodule, estimator), r.run_cfg


def network_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The network's own weights in a LightningModule's state dict (``net.*``; a compiled
    network's ``net._orig_mod.*`` too), keyed as the bare network names them."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("net."):
            out[key.removeprefix("net.").removeprefix("_orig_mod.")] = value
    return out


def checkpoint_estimator(
    ckpt: dict[str, Any], net: torch.nn.Module, datamodule: CellDataModule
) -> FateEstimator:
    """The calibration/OOD/correction state saved with the checkpoint; a checkpoint from before
    calibration gets one fit now on the data's validation and training cells."""
    if ckpt.get(ESTIMATION_KEY):
        return FateEstimator.from_state(ckpt[ESTIMATION_KEY])
    settings = EstimationSettings.from_config(OmegaConf.create(ckpt["nscfate_config"]))
    return fit_estimator_on(net, datamodule, settings)
