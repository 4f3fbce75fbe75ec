"""Predict fates of new crops with a logged or registered model: model resolution, per-cell
predictions, fate-fraction tables (the crops come from :mod:`nscfate.data.inputs`)."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from nscfate.data.schema import CLASSES
from nscfate.errors import NscfateError
from nscfate.estimation import FateEstimator
from nscfate.evaluation.evaluate import LOGIT_COLUMNS, PROB_COLUMNS, fate_fractions
from nscfate.files import atomic_write
from nscfate.tracking.pyfunc import FateModel, run_model_uri

#: Share of a plate's cells flagged OOD above which predict warns that its answers are unreliable.
OOD_ALARM = 0.5
#: A culture with at least this many cells of which this share is flagged gets its own warning.
CULTURE_MIN_CELLS, CULTURE_ALARM = 20, 0.2


def resolve_model_uri(model: str, client: MlflowClient) -> str:
    """``models:/name@alias``, ``models:/name/3``, ``runs:/...``, a run id, or a local model folder."""
    if model.startswith(("models:/", "runs:/")):
        return model
    if Path(model).is_dir():
        if not (Path(model) / "MLmodel").is_file():
            raise NscfateError(
                f"model={model} is a folder but not an MLflow model (no MLmodel file)"
            )
        return str(Path(model).resolve())
    if re.fullmatch(r"[0-9a-f]{32}", model):
        try:
            uri = run_model_uri(client, model)  # a sweep trial's deferred model is built now
        except MlflowException as err:
            raise NscfateError(f"model={model}: no such run in {client.tracking_uri}") from err
        if uri is None:
            raise NscfateError(
                f"model={model}: the run has no logged model (tag nscfate.model_uri)"
            )
        return uri
    raise NscfateError(
        f"model={model}: expected models:/<name>@<alias>, models:/<name>/<version>, a run id or an MLflow model folder"
    )


def load_model(uri: str) -> mlflow.pyfunc.PyFuncModel:
    """Load a pyfunc model, with a one-line error naming the URI when it does not resolve."""
    try:
        return mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as err:
        message = getattr(err, "message", str(err)).splitlines()[0]
        raise NscfateError(f"model={uri} does not resolve: {message}") from err


def predict_cells(
    model: mlflow.pyfunc.PyFuncModel, crops: list[np.ndarray], cells: pd.DataFrame
) -> tuple[pd.DataFrame, FateEstimator | None]:
    """One row per cell: source (and known columns), predicted fate, one calibrated probability
    per class, raw logits, OOD score and flag; and the model's estimator (None if it has none)."""
    inner = model.unwrap_python_model() if hasattr(model, "unwrap_python_model") else None
    days = cells["day"].to_numpy(dtype=np.float64) if "day" in cells else None
    params = {"days": days} if days is not None and np.isfinite(days).any() else None
    if isinstance(inner, FateModel):  # takes crops of different sizes in one call
        probs = inner.predict(None, crops, params)
    else:
        probs = model.predict(np.stack(crops).astype(np.float32))
    out = cells.reset_index(drop=True).copy()
    out["fate"] = probs["fate"].to_numpy()
    out[PROB_COLUMNS] = probs[list(CLASSES)].to_numpy()
    for column in [*LOGIT_COLUMNS, "ood_score", "ood"]:
        if column in probs:
            out[column] = probs[column].to_numpy()
    return out, getattr(inner, "estimator", None)


def fate_fraction_table(
    predictions: pd.DataFrame, estimator: FateEstimator | None
) -> pd.DataFrame | None:
    """Fate fractions per condition (and day, when known): one row per group x fate with the count,
    the corrected estimate, its 95 % interval, the OOD share and, with labels, the truth.

    None when the input had no condition column.
    """
    if "condition" not in predictions:
        return None
    cells = predictions.rename(columns={"fate": "predicted"})
    if "label" not in cells:
        cells["label"] = ""
    if not set(LOGIT_COLUMNS) <= set(cells.columns):
        estimator = None  # a foreign pyfunc model: counts only
    by_day = "day" in cells and cells["day"].notna().any()
    table = fate_fractions(cells, estimator, by=("condition", "day") if by_day else ("condition",))
    return table.dropna(axis=1, how="all")  # no true_frac column without labels


def ood_alarm(predictions: pd.DataFrame) -> str | None:
    """A loud message when most of the input is unlike anything the model was trained on."""
    if "ood" not in predictions or predictions["ood_score"].isna().all():
        return None
    share = float(predictions["ood"].mean())
    if share <= OOD_ALARM:
        return None
    return (
        f"{share:.0%} of these {len(predictions)} crops are out of distribution (unlike the "
        "training crops): their fates and fractions are unreliable. Check the imaging (focus, "
        "magnification, bright-field vs fluorescence, crop size) or train on such crops."
    )


def culture_alarms(predictions: pd.DataFrame) -> list[str]:
    """One message per culture (``batch``) whose own cells are mostly flagged while the input as a
    whole is not: a culture imaged unlike the training cultures (its focus or camera), whose cells
    should be looked at before they are counted. Cultures of fewer than ``CULTURE_MIN_CELLS``
    cells are not judged (at a 1 % false-alarm rate, 4 of 20 flagged happens by chance once in
    about 20,000 cultures)."""
    if "batch" not in predictions or "ood" not in predictions:
        return []
    if predictions["ood_score"].isna().all() or predictions["ood"].mean() > OOD_ALARM:
        return []  # no detector, or the whole input is already alarmed
    flagged = predictions.groupby(predictions["batch"].astype(str))["ood"].agg(["sum", "size"])
    share = flagged["sum"] / flagged["size"]
    loud = flagged[(flagged["size"] >= CULTURE_MIN_CELLS) & (share >= CULTURE_ALARM)]
    total, n = flagged["sum"].sum(), flagged["size"].sum()
    messages = []
    for culture, row in loud.iterrows():
        rest = n - row["size"]
        others = f" (the other cultures {(total - row['sum']) / rest:.1%})" if rest else ""
        messages.append(
            f"culture {culture!r}: {share[culture]:.0%} of its {int(row['size'])} crops are out of "
            f"distribution{others}. Check its imaging (focus, exposure, camera) before counting "
            "its cells."
        )
    return messages


def write_csv(table: pd.DataFrame, out: Path) -> None:
    """Write a CSV atomically (temporary file, then rename)."""
    with atomic_write(out) as tmp:
        table.to_csv(tmp, index=False)


#: Crops explained per Grad-CAM pass (``cam=true``): bounds memory on a large plate.
CAM_CHUNK = 256


def write_activation_maps(
    model: mlflow.pyfunc.PyFuncModel, crops: list[np.ndarray], predictions: pd.DataFrame, out: Path
) -> list[Path]:
    """``cam=true``: one PNG per crop in ``out``, the crop (as the model saw it) under the Grad-CAM
    of the fate it was given, named ``<row>_<source file stem>.png``."""
    import torch

    from nscfate.data.preprocess import prepare_batch
    from nscfate.evaluation.cam import activation_maps, save_overlays

    inner = model.unwrap_python_model() if hasattr(model, "unwrap_python_model") else None
    if not isinstance(inner, FateModel):
        raise NscfateError("cam=true needs an nscfate model (its network); this model is not one")
    x = prepare_batch(crops, tuple(inner.spec["size"]), inner.normalizer, inner.spec["white_level"])
    targets = predictions["fate"].map(CLASSES.index).to_numpy()
    written = []
    for start in range(0, len(x), CAM_CHUNK):
        part = slice(start, start + CAM_CHUNK)
        maps, _ = activation_maps(inner.net, torch.from_numpy(x[part]), targets[part])
        rows = predictions.iloc[part]
        names = [
            f"{i:05d}_{Path(str(s)).stem}" for i, s in zip(rows.index, rows["source"], strict=True)
        ]
        titles = [
            f"{Path(str(s)).name}: {f}" for s, f in zip(rows["source"], rows["fate"], strict=True)
        ]
        written += save_overlays(x[part, 0], maps, names, titles, out)
    return written
