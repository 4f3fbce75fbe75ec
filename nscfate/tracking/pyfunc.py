"""The MLflow pyfunc model: raw grey crops (any size, uint8/uint16/float) in, fate probabilities out.

It embeds the preprocessing (fit to the training crop size, scale by bit depth, the training
normalisation), the architecture's config, its weights and the estimator fit after training
(calibration, OOD detector, validation cells for the fate-fraction correction), so a served or
registered model needs nothing from the run that made it. Outputs: calibrated probabilities, the
predicted ``fate``, raw ``logit_*`` (what the fraction correction works on), ``ood_score``, ``ood``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

from nscfate.data.normalize import Normalizer
from nscfate.data.preprocess import prepare_batch
from nscfate.data.schema import CLASSES
from nscfate.estimation import FateEstimator
from nscfate.evaluation.evaluate import LOGIT_COLUMNS, logits_and_features

# The input is a tensor spec (signature below), not type hints; MLflow warns about the latter.
warnings.filterwarnings("ignore", message=".*type hint.*", category=UserWarning, module="mlflow")
warnings.filterwarnings("ignore", message=".*Add type hints.*", category=UserWarning)

#: Rows per forward pass when predicting many crops.
PREDICT_BATCH = 256


class FateModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper around a trained fate classifier."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from nscfate.models import create_model

        self.spec = json.loads(Path(context.artifacts["spec"]).read_text())
        self.net = create_model(**self.spec["model"])
        self.net.load_state_dict(
            torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        )
        self.net.eval()
        self.normalizer = Normalizer.from_state(self.spec["normalizer"])
        #: None for models logged before calibration: plain softmax, no OOD score.
        self.estimator = (
            FateEstimator.from_state(
                torch.load(context.artifacts["estimation"], map_location="cpu", weights_only=True)
            )
            if "estimation" in context.artifacts
            else None
        )

    def predict(self, context, model_input, params=None):  # untyped: MLflow reads type hints
        """Calibrated probabilities (one column per fate), ``fate``, ``logit_*``, ``ood_score``
        (NaN without a detector) and ``ood``."""
        x = prepare_batch(
            model_input, tuple(self.spec["size"]), self.normalizer, self.spec["white_level"]
        )
        parts = [
            logits_and_features(self.net, torch.from_numpy(chunk))
            for chunk in np.array_split(x, max(1, len(x) // PREDICT_BATCH))
        ]
        logits = np.concatenate([z for z, _ in parts])
        features = np.concatenate([f for _, f in parts])
        estimator = self.estimator or FateEstimator.plain(len(CLASSES))
        probs = estimator.probabilities(logits)
        table = pd.DataFrame(probs, columns=list(CLASSES))
        table["fate"] = np.asarray(CLASSES)[probs.argmax(1)]
        table[LOGIT_COLUMNS] = logits
        table["ood_score"] = estimator.ood_scores(features)
        table["ood"] = estimator.ood_flags(table["ood_score"].to_numpy())
        return table


def signature() -> ModelSignature:
    """Input: a stack of grey crops N x H x W (any H, W); output: probabilities and fate."""
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
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1))]), outputs=outputs
    )


def log_fate_model(
    net: torch.nn.Module,
    model_cfg: dict,
    size: tuple[int, int],
    normalizer: Normalizer,
    white_level: int,
    example: np.ndarray,
    workdir: Path,
    estimator: FateEstimator,
) -> mlflow.models.model.ModelInfo:
    """Log the pyfunc model into the active run (name ``model``) and return its ModelInfo."""
    workdir.mkdir(parents=True, exist_ok=True)
    weights, spec = workdir / "weights.pt", workdir / "spec.json"
    estimation = workdir / "estimation.pt"
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, weights)
    torch.save(estimator.state(), estimation)
    spec.write_text(
        json.dumps(
            {
                "model": model_cfg,
                "size": list(size),
                "normalizer": normalizer.state(),
                "white_level": int(white_level),
                "classes": list(CLASSES),
            },
            indent=2,
        )
    )
    import timm

    return mlflow.pyfunc.log_model(
        name="model",
        python_model=FateModel(),
        artifacts={"weights": str(weights), "spec": str(spec), "estimation": str(estimation)},
        signature=signature(),
        input_example=example.astype(np.float32),
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
