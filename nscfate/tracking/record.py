"""What a tracked run records in MLflow: the flattened resolved config as params and as YAML, the
git commit, the dataset and split digests (as MLflow dataset inputs), the final metrics, plots,
per-cell predictions, the best checkpoint, the pyfunc model and the run's warnings."""

from __future__ import annotations

import logging
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset
from omegaconf import DictConfig, OmegaConf

from nscfate.data.preview import cached_contact_sheet
from nscfate.evaluation import plots
from nscfate.evaluation.cam import cam_gallery
from nscfate.evaluation.evaluate import FIT_METRICS
from nscfate.evaluation.health import RunWarning
from nscfate.paths import REPO_ROOT
from nscfate.redact import redact_values
from nscfate.tracking.pyfunc import DEFERRED, DEFERRED_MODEL_TAG, MODEL_URI_TAG, log_fate_model

log = logging.getLogger(__name__)
#: Longest parameter value logged as is (MLflow allows 6000; the UI is happier with less).
MAX_PARAM_CHARS = 500


def log_warnings(warnings: Sequence[RunWarning]) -> None:
    """Tag the active run with what went wrong: ``nscfate.warnings`` lists the codes (searchable in
    the UI: ``tags.`nscfate.warnings` LIKE '%single_class%'``), ``nscfate.warning.<code>`` says
    what happened and what to try."""
    if warnings:
        mlflow.set_tags(
            {"nscfate.warnings": ",".join(w.code for w in warnings)}
            | {f"nscfate.warning.{w.code}": str(w) for w in warnings}
        )


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    """Flatten a nested config into ``a.b.c -> value`` strings, long values shortened."""
    if isinstance(node, Mapping):
        items = node.items()
    elif isinstance(node, list) and any(isinstance(v, (Mapping, list)) for v in node):
        items = ((str(i), v) for i, v in enumerate(node))
    else:
        text = str(node)
        return {
            prefix: text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."
        }
    out: dict[str, str] = {}
    for key, value in items:
        out |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def log_config(cfg: DictConfig) -> None:
    """The resolved config as params and as ``config.yaml``."""
    resolved = redact_values(OmegaConf.to_container(cfg, resolve=True))
    mlflow.log_params(flatten(resolved))
    mlflow.log_text(OmegaConf.to_yaml(resolved), "config.yaml")


def git_tags() -> dict[str, str]:
    """The checkout's commit (and whether it had uncommitted changes) as MLflow source tags."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {}
    if not commit:
        return {}
    return {
        "mlflow.source.git.commit": commit,
        "nscfate.git_dirty": str(bool(git("status", "--porcelain"))),
    }


def log_results(
    cfg: DictConfig,
    metrics: dict[str, float],
    objects: dict[str, Any],
    oracle_by_day: dict[float, float],
    log_model: bool = True,
) -> None:
    """Final metrics, dataset inputs, plots, predictions, checkpoint and the pyfunc model.

    ``log_model=False`` (a sweep trial that cannot be promoted) leaves the pyfunc model and the
    activation-map gallery out and tags the run ``nscfate.model=on promotion``: ``nscfate-promote`` builds it from the logged
    checkpoint if the run is ever promoted (``nscfate.tracking.registry``).
    """
    datamodule, evaluation = objects["datamodule"], objects["evaluation"]
    # fit metrics already went in per epoch through the Lightning logger
    mlflow.log_metrics(
        {k: v for k, v in metrics.items() if k not in FIT_METRICS and np.isfinite(v)}
    )
    log_dataset_inputs(datamodule)
    for fig, name in _figures(evaluation, oracle_by_day):
        mlflow.log_figure(fig, f"plots/{name}.png")
        plots.close(fig)
    if log_model:  # like the model: a trial that cannot be promoted is not looked at closely
        log_cam_gallery(cfg, objects)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tables = {
            "cells": evaluation.cells,
            "fate_fractions": evaluation.fractions,
            "fate_fractions_by_day": evaluation.fractions_by_day,
        }
        for name, table in tables.items():
            if len(table):
                table.to_csv(tmp / f"{name}.csv", index=False)
                mlflow.log_artifact(str(tmp / f"{name}.csv"), "predictions")
        mlflow.log_artifact(str(data_preview(datamodule.store, tmp)), "plots")
        if objects.get("best_checkpoint"):
            mlflow.log_artifact(objects["best_checkpoint"], "checkpoints")
        if not cfg.tracking.get("log_model", True):
            return
        if log_model or not objects.get("best_checkpoint"):
            info = _log_model(cfg, objects, tmp / "model")
            mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
        else:
            mlflow.set_tag(DEFERRED_MODEL_TAG, DEFERRED)


def log_cam_gallery(cfg: DictConfig, objects: dict[str, Any]) -> None:
    """``cam/gallery.png``: Grad-CAM of ``cam.per_group`` test cells per fate x day (0: none)."""
    per_group = int((cfg.get("cam") or {}).get("per_group", 0) or 0)
    if per_group <= 0 or objects.get("module") is None:
        return
    cells = objects["evaluation"].cells
    fig = cam_gallery(objects["module"].net, objects["datamodule"], cells, per_group, cfg.seed)
    if fig is not None:
        mlflow.log_figure(fig, "cam/gallery.png")
        plots.close(fig)


def data_preview(store: Any, directory: Path) -> Path:
    """``data_preview.png`` (the store's contact sheet, drawn once per store) in ``directory``."""
    return cached_contact_sheet(store, directory / "data_preview.png")


def log_dataset_inputs(datamodule: Any) -> None:
    """Dataset and split digests as MLflow dataset inputs (and tags, which are searchable)."""
    store = datamodule.store
    source = _StoreSource(str(store.path))
    _log_input(
        MetaDataset(source, name=store.path.name, digest=store.digest[:16]),
        context="dataset",
        tags={"digest": store.digest},
    )
    _log_input(
        MetaDataset(source, name=f"{store.path.name}-split", digest=datamodule.split_digest[:16]),
        context="split",
        tags={"split_digest": datamodule.split_digest},
    )
    mlflow.set_tags(
        {
            "nscfate.dataset_digest": store.digest,
            "nscfate.split_digest": datamodule.split_digest,
            "nscfate.dataset_path": str(store.path),
        }
    )


def _log_input(dataset: MetaDataset, context: str, tags: dict[str, str], attempts: int = 5) -> None:
    """``mlflow.log_input``, retried: MLflow's SQL store checks-then-inserts the dataset row, so two
    workers logging the same dataset at once can collide on its unique key; the retry finds the row."""
    for attempt in range(attempts):
        try:
            mlflow.log_input(dataset, context=context, tags=tags)
            return
        except mlflow.exceptions.MlflowException as err:
            collided = "unique" in str(err).lower()
            if not collided or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


class _StoreSource(DatasetSource):
    """A dataset store on the local filesystem, as an MLflow dataset source."""

    def __init__(self, path: str) -> None:
        self.path = path

    @staticmethod
    def _get_source_type() -> str:
        return "nscfate_store"

    def load(self, dst_path: str | None = None) -> str:
        return self.path

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> _StoreSource:
        return cls(str(raw_source))

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> _StoreSource:
        return cls(source_dict["path"])


def _figures(evaluation: Any, oracle: dict[float, float] | None) -> list[tuple[Any, str]]:
    figures = [
        (plots.confusion_figure(evaluation.confusion), "confusion_matrix"),
        (plots.accuracy_by_day_figure(evaluation.accuracy_by_day, oracle), "accuracy_by_day"),
        (plots.reliability_figure(evaluation.cells), "reliability"),
    ]
    if len(evaluation.fractions):
        figures.append((plots.fate_fraction_figure(evaluation.fractions), "fate_fractions"))
    return figures


def _log_model(cfg: DictConfig, objects: dict[str, Any], workdir: Path) -> Any:
    model_cfg = {
        k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "_target_"
    }
    return log_fate_model(
        objects["module"].net,
        model_cfg,
        objects["datamodule"],
        objects["evaluation"].estimator,
        workdir,
    )
