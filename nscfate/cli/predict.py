"""``nscfate-predict``: per-cell fate probabilities (and fate fractions per condition) for new crops."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from nscfate.cli.entry import console_script  # noqa: E402
from nscfate.cli.errors import friendly_errors  # noqa: E402
from nscfate.paths import CONF_DIR, require_checkout  # noqa: E402  (registers ${nscfate.repo:})

require_checkout("nscfate-predict")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="predict")
@friendly_errors("nscfate-predict")
def app(cfg: DictConfig) -> None:
    """Predict every crop of ``input`` with ``model``; write ``output`` (and its fractions table)."""
    import mlflow
    from mlflow import MlflowClient

    from nscfate.data.inputs import load_inputs
    from nscfate.evaluation.evaluate import LOGIT_COLUMNS
    from nscfate.tracking.connection import check_reachable
    from nscfate.tracking.predict import (
        culture_alarms,
        fate_fraction_table,
        load_model,
        ood_alarm,
        predict_cells,
        resolve_model_uri,
        write_activation_maps,
        write_csv,
    )
    from nscfate.tracking.summary import print_alarm, print_fractions

    output = Path(cfg.output).expanduser().resolve()
    crops, cells = load_inputs(Path(cfg.input).expanduser())
    check_reachable(cfg.tracking.uri)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    uri = resolve_model_uri(str(cfg.model_uri), MlflowClient(cfg.tracking.uri))
    model = load_model(uri)
    predictions, estimator = predict_cells(model, crops, cells)
    kept = predictions if cfg.logits else predictions.drop(columns=LOGIT_COLUMNS, errors="ignore")
    write_csv(kept, output)
    print(f"predicted {len(predictions)} cells with {cfg.model_uri} -> {output}")
    if (alarm := ood_alarm(predictions)) is not None:
        print_alarm(alarm)
    for alarm in culture_alarms(predictions):
        print_alarm(alarm)
    fractions = fate_fraction_table(predictions, estimator)
    if fractions is not None:
        fractions_path = output.with_name(f"{output.stem}_fractions.csv")
        write_csv(fractions, fractions_path)
        print_fractions(fractions)
        print(f"fate fractions -> {fractions_path}")
    if cfg.cam:
        maps = output.with_name(f"{output.stem}_cam")
        n = len(write_activation_maps(model, crops, predictions, maps))
        print(f"Grad-CAM of the predicted fate, one PNG per crop: {n} -> {maps}")


def main() -> None:
    """Entry point: ``model=<uri>`` means ``model_uri=<uri>`` (``model`` is also a config group)."""
    sys.argv = [
        f"model_uri={a[len('model=') :]}" if a.startswith("model=") else a for a in sys.argv
    ]
    app()


#: The console script (pyproject's entry point): main, then no interpreter teardown.
entry = console_script(main)


if __name__ == "__main__":
    entry()
