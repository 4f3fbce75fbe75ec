"""A checkpoint is data, never code: pickle payloads and foreign ``_target_`` are refused."""

from __future__ import annotations

import os

import pytest
import torch

from nscfate.errors import NscfateError
from nscfate.evaluation.checkpoint import evaluate_checkpoint


class _Boom:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_payload_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "pickle.ckpt"
    torch.save({"state_dict": {}, "nscfate_config": {"x": 1}, "boom": _Boom(str(marker))}, path)
    with pytest.raises(NscfateError, match="pickle.ckpt holds more than weights and plain data"):
        evaluate_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("node", ["model", "data"])
def test_a_foreign_target_in_the_stored_config_is_refused(tmp_path, node):
    marker = tmp_path / "PWNED"
    hostile = {"_target_": "builtins.open", "file": str(marker), "mode": "w"}
    model = {"_target_": "nscfate.models.create_model", "name": "small_cnn"}
    config = {"model": model, "data": {"_target_": "nscfate.data.datamodule.CellDataModule"}}
    config[node] = hostile
    path = tmp_path / "target.ckpt"
    torch.save({"state_dict": {}, "nscfate_config": config}, path)
    with pytest.raises(NscfateError, match=f"{node}._target_='builtins.open' is not nscfate's own"):
        evaluate_checkpoint(path)
    assert not marker.exists()
