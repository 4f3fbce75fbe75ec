"""The MLflow pyfunc model: raw grey crops (any size, uint8/uint16/float) in, fate probabilities out.

It embeds the preprocessing (fit to the training crop size, scale by bit depth, the training
normalisation), the architecture's config and its weights, so a served or registered model needs
nothing from the run that made it.
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

    def predict(self, context, model_input, params=None):  # noqa: ANN001 (MLflow reads type hints)
        """Class probabilities (one column per fate, summing to 1) and the predicted ``fate``."""
        x = prepare_batch(
            model_input, tuple(self.spec["size"]), self.normalizer, self.spec["white_level"]
        )
        with torch.inference_mode():
            probs = torch.cat(
                [
                    self.net(torch.from_numpy(chunk)).float().softmax(1)
                    for chunk in np.array_split(x, max(1, len(x) // PREDICT_BATCH))
                ]
            )
        table = pd.DataFrame(probs.numpy().astype(np.float64), columns=list(CLASSES))
        table["fate"] = np.asarray(CLASSES)[probs.argmax(1).numpy()]
        return table


def signature() -> ModelSignature:
    """Input: a stack of grey crops N x H x W (any H, W); output: probabilities and fate."""
    outputs = Schema([*(ColSpec("double", c) for c in CLASSES), ColSpec("string", "fate")])
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
) -> mlflow.models.model.ModelInfo:
    """Log the pyfunc model into the active run (name ``model``) and return its ModelInfo."""
    workdir.mkdir(parents=True, exist_ok=True)
    weights, spec = workdir / "weights.pt", workdir / "spec.json"
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, weights)
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
        artifacts={"weights": str(weights), "spec": str(spec)},
        signature=signature(),
        input_example=example.astype(np.float32),
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"timm=={timm.__version__}",
            f"mlflow=={mlflow.__version__}",
            "numpy",
            "pandas",
            "scipy",
            "nscfate",
        ],
    )
