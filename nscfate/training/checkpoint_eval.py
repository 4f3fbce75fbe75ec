"""Evaluate a saved checkpoint on its own: it carries the run's resolved config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from nscfate.errors import NscfateError
from nscfate.training.evaluate import Evaluation, evaluate
from nscfate.training.module import FateClassifier
from nscfate.training.train import build


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a Lightning checkpoint written by nscfate (it must hold ``nscfate_config``)."""
    path = Path(path)
    if not path.is_file():
        raise NscfateError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise NscfateError(f"checkpoint {path} is unreadable: {err}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or not ckpt.get("nscfate_config"):
        raise NscfateError(f"{path} is not an nscfate checkpoint (no state_dict/nscfate_config)")
    return ckpt


def evaluate_checkpoint(
    path: str | Path, model: DictConfig | None = None, data: DictConfig | None = None
) -> tuple[Evaluation, DictConfig]:
    """Rebuild the run's network and data (or the given ``data``), load the weights, evaluate.

    ``model`` is a check, not a replacement: asking for an architecture other than the one in the
    checkpoint is an error naming both.
    """
    ckpt = load_checkpoint(path)
    run_cfg = OmegaConf.create(ckpt["nscfate_config"])
    if model is not None and model.get("name") != run_cfg.model.name:
        raise NscfateError(
            f"checkpoint {path} holds a {run_cfg.model.name!r} network, not model={model.get('name')!r}"
        )
    net = build(run_cfg.model)
    module = FateClassifier(net=net, optimizer=torch.optim.SGD)
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise NscfateError(
            f"checkpoint {path} does not fit model {run_cfg.model.name!r}: {first}"
        ) from err
    # The network sees crops as it was trained (checkpoints older than the option: unpadded).
    data = data if data is not None else run_cfg.data
    with open_dict(data):
        data.pad_to_square = run_cfg.data.get("pad_to_square", False)
    datamodule = build(data)
    datamodule.prepare_data()
    datamodule.setup("test")
    return evaluate(module, datamodule), run_cfg
