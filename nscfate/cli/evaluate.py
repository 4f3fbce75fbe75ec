"""``nscfate-eval``: re-evaluate a run (``run_id=``) or checkpoint (``ckpt_path=``); print metrics JSON."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from nscfate.cli.entry import console_script  # noqa: E402
from nscfate.cli.errors import friendly_errors  # noqa: E402
from nscfate.errors import NscfateError  # noqa: E402
from nscfate.paths import CONF_DIR, require_checkout  # noqa: E402  (registers ${nscfate.repo:})

require_checkout("nscfate-eval")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
@friendly_errors("nscfate-eval")
def main(cfg: DictConfig) -> None:
    """Evaluate and print ``{"metrics": ..., "max_abs_diff_vs_run": ...}``."""
    if bool(cfg.run_id) == bool(cfg.ckpt_path):
        raise NscfateError(
            "give exactly one of run_id=<mlflow run id> or ckpt_path=<checkpoint file>"
        )
    from nscfate.evaluation.checkpoint import evaluate_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, logged = cfg.ckpt_path, None
        if cfg.run_id:  # the run's best checkpoint and what it logged, from MLflow
            from nscfate.tracking.connection import check_reachable
            from nscfate.tracking.fetch import fetch_run

            check_reachable(cfg.tracking.uri)
            checkpoint, logged = fetch_run(cfg.tracking.uri, cfg.run_id, Path(tmp))
        evaluation, _ = evaluate_checkpoint(
            checkpoint, model=cfg.get("model"), data=cfg.get("data")
        )
    report: dict = {}
    if logged is not None:
        shared = [
            k for k in evaluation.metrics if k in logged and math.isfinite(evaluation.metrics[k])
        ]
        report["max_abs_diff_vs_run"] = max(
            (abs(evaluation.metrics[k] - logged[k]) for k in shared), default=None
        )
    print(json.dumps({"metrics": evaluation.metrics} | report, indent=2))


#: The console script (pyproject's entry point): main, then no interpreter teardown.
entry = console_script(main)


if __name__ == "__main__":
    entry()
