"""The MLflow pyfunc model: raw grey crops (any size, uint8/uint16/float) in, fate probabilities out.

It embeds the preprocessing (fit to the training crop size, scale by bit depth, the training
normalisation), the architecture's config, its weights and the estimator fit after training
(calibration, OOD detector, validation cells for the fate-fraction correction), so a served or
registered model needs nothing from the run that made it. Outputs: calibrated probabilities, the
predicted ``fate``, raw ``logit_*`` (what the fraction correction works on), ``ood_score``, ``ood``.
"""

from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from nscfate.data.normalize import Normalizer
from nscfate.data.preprocess import prepare_batch
from nscfate.data.schema import CLASSES
from nscfate.errors import NscfateError
from nscfate.estimation import FateEstimator
from nscfate.evaluation.evaluate import LOGIT_COLUMNS, inference_copy, logits_and_features

# The input is a tensor spec (signature below), not type hints; MLflow warns about the latter.
warnings.filterwarnings("ignore", message=".*type hint.*", category=UserWarning, module="mlflow")
warnings.filterwarnings("ignore", message=".*Add type hints.*", category=UserWarning)

#: Rows per forward pass when predicting many crops.
PREDICT_BATCH = 256
#: The tag that holds a run's logged pyfunc model (``models:/m-...``).
MODEL_URI_TAG = "nscfate.model_uri"
#: Set instead on a sweep trial that could not be promoted when it finished: its model is built
#: from its logged checkpoint when it is asked for (:func:`run_model_uri`).
DEFERRED_MODEL_TAG, DEFERRED = "nscfate.model", "on promotion"


class FateModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper around a trained fate classifier."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from nscfate.models import create_model

        self.spec = json.loads(Path(context.artifacts["spec"]).read_text())
        self.net = create_model(**self.spec["model"])
        self.net.load_state_dict(
            torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        )
        self.net = inference_copy(self.net)  # batch norms folded, channels-last: as evaluation runs
        self.normalizer = Normalizer.from_state(self.spec["normalizer"])
        #: None for models logged before calibration: plain softmax, no OOD score.
        self.estimator = (
            FateEstimator.from_state(
                torch.load(context.artifacts["estimation"], map_location="cpu", weights_only=True)
            )
            if "estimation" in context.artifacts
            else None
        )

    def logits_and_features(self, crops) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits and penultimate features of grey crops (a stack or a list of any sizes),
        preprocessed as the model was trained."""
        x = prepare_batch(
            crops, tuple(self.spec["size"]), self.normalizer, self.spec["white_level"]
        )
        parts = [
            logits_and_features(
                self.net, torch.from_numpy(chunk).contiguous(memory_format=torch.channels_last)
            )
            for chunk in np.array_split(x, max(1, len(x) // PREDICT_BATCH))
        ]
        return np.concatenate([z for z, _ in parts]), np.concatenate([f for _, f in parts])

    def predict(self, context, model_input, params=None):  # untyped: MLflow reads type hints
        """Calibrated probabilities (one column per fate), ``fate``, ``logit_*``, ``ood_score``
        (NaN without a detector) and ``ood``. ``params={"days": [...]}``: each crop's day of
        culture (NaN where unknown), for the model's calibration per day; none: pooled."""
        logits, features = self.logits_and_features(model_input)
        estimator = self.estimator or FateEstimator.plain(len(CLASSES))
        probs = estimator.probabilities(logits, crop_days(params, len(logits)))
        table = pd.DataFrame(probs, columns=list(CLASSES))
        table["fate"] = np.asarray(CLASSES)[probs.argmax(1)]
        table[LOGIT_COLUMNS] = logits
        table["ood_score"] = estimator.ood_scores(features)
        table["ood"] = estimator.ood_flags(table["ood_score"].to_numpy())
        return table


def crop_days(params: dict | None, n: int) -> np.ndarray | None:
    """The ``days`` parameter as one float per crop (None when not given or empty)."""
    days = (params or {}).get("days")
    if days is None or len(days) == 0:
        return None
    days = np.asarray(days, dtype=np.float64)
    if days.shape != (n,):
        raise NscfateError(f"params days: expected one day per crop ({n}), got shape {days.shape}")
    return days


def signature() -> ModelSignature:
    """Input: a stack of grey crops N x H x W (any H, W); output: probabilities and fate;
    parameter ``days``: each crop's day of culture (empty: unknown)."""
    outputs = Schema(
        [
            *(ColSpec("double", c) for c in CLASSES),
            ColSpec("string", "fate"),
            *(ColSpec("double", c) for c in LOGIT_COLUMNS),
            ColSpec("double", "ood_score"),
            ColSpec("boolean", "ood"),
        ]
    )
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1))]),
        outputs=outputs,
        params=ParamSchema([ParamSpec("days", "double", [], (-1,))]),
    )


def warm_model_logging() -> threading.Thread | None:
    """Start, in a daemon thread, the one slow step of logging a pyfunc model that does not depend
    on the model: MLflow's map of installed packages, which it builds to check the model's
    requirements against this environment by reading every installed distribution's file list
    (seconds with torch installed). Started when a run starts, it overlaps training instead of
    following it; a sweep worker builds it once."""
    try:
        from mlflow.utils.requirements_utils import _init_modules_to_packages_map
    except ImportError:  # another MLflow release: logging still works, the map is built then
        return None
    thread = threading.Thread(
        target=_init_modules_to_packages_map, name="nscfate-warm-model-logging", daemon=True
    )
    thread.start()
    return thread


def log_fate_model(
    net: torch.nn.Module,
    model_cfg: dict,
    datamodule,
    estimator: FateEstimator,
    workdir: Path,
    run_id: str | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log the pyfunc model (name ``model``) into the active run, or into the finished run
    ``run_id`` (a model built later from the run's checkpoint), and return its ModelInfo.

    ``datamodule`` (set up) gives the input size, the normalisation, the white level and the two
    crops of the input example.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    weights, spec = workdir / "weights.pt", workdir / "spec.json"
    estimation = workdir / "estimation.pt"
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, weights)
    torch.save(estimator.state(), estimation)
    store = datamodule.store
    spec.write_text(
        json.dumps(
            {
                "model": model_cfg,
                "size": list(datamodule.input_size),
                "normalizer": datamodule.normalizer.state(),
                "white_level": int(store.white_level),
                "classes": list(CLASSES),
            },
            indent=2,
        )
    )
    import timm

    return Model.log(
        None,  # artifact_path: MLflow 3 names the model instead
        name="model",
        flavor=mlflow.pyfunc,
        run_id=run_id,
        model_id=finished_run_model(run_id),
        python_model=FateModel(),
        artifacts={"weights": str(weights), "spec": str(spec), "estimation": str(estimation)},
        signature=signature(),
        input_example=np.asarray(store.images[:2]).astype(np.float32),
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"timm=={timm.__version__}",
            f"mlflow=={mlflow.__version__}",
            "numpy",
            "pandas",
            "scipy",
            "scikit-learn",
            "quapy",
            "nscfate",
        ],
    )


def finished_run_model(run_id: str | None) -> str | None:
    """For a model logged into a finished run: a logged model created in that run's experiment
    (its id), else None. MLflow would file it under the active experiment, by default the Default
    one, whose artifact root on a local store is ``./mlruns/0`` of the directory that created the
    database, and list it apart from its run."""
    if run_id is None:
        return None
    run = mlflow.MlflowClient().get_run(run_id)
    model = mlflow.initialize_logged_model(
        name="model",
        source_run_id=run_id,
        params=run.data.params,
        experiment_id=run.info.experiment_id,
    )
    return model.model_id


def has_model(tags: dict[str, str]) -> bool:
    """Whether a run's tags say it has a pyfunc model: logged, or deferred to its promotion."""
    return MODEL_URI_TAG in tags or tags.get(DEFERRED_MODEL_TAG) == DEFERRED


def run_model_uri(client: mlflow.MlflowClient, run_id: str) -> str | None:
    """The pyfunc model of a finished run: the logged one, or for a sweep trial that deferred it
    (tag ``nscfate.model=on promotion``) one built now from the run's checkpoint, logged into the
    run and tagged as if it had been logged in training. None when the run has neither."""
    tags = client.get_run(run_id).data.tags
    if MODEL_URI_TAG in tags:
        return tags[MODEL_URI_TAG]
    if not has_model(tags):
        return None
    import tempfile

    from nscfate.evaluation.checkpoint import checkpoint_estimator, rebuild
    from nscfate.tracking.fetch import run_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        r = rebuild(run_checkpoint(client, run_id, Path(tmp)))
        estimator = checkpoint_estimator(r.ckpt, r.net, r.datamodule)
        info = log_fate_model(
            r.net, r.model_values, r.datamodule, estimator, Path(tmp) / "model", run_id=run_id
        )
    client.set_tag(run_id, MODEL_URI_TAG, info.model_uri)
    client.delete_tag(run_id, DEFERRED_MODEL_TAG)
    return info.model_uri
