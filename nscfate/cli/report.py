"""``nscfate-report``: render a run, a sweep's study or an MLflow experiment as one HTML file."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from nscfate.cli.entry import console_script  # noqa: E402
from nscfate.cli.errors import friendly_errors  # noqa: E402
from nscfate.paths import CONF_DIR, require_checkout  # noqa: E402  (registers ${nscfate.repo:})

require_checkout("nscfate-report")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="report")
@friendly_errors("nscfate-report")
def main(cfg: DictConfig) -> None:
    """Build the report, write ``output``, log it to MLflow and say where both went."""
    from mlflow import MlflowClient

    from nscfate.report.build import build, check_settings, write
    from nscfate.tracking.connection import check_reachable

    check_settings(cfg)
    check_reachable(cfg.tracking.uri)
    client = MlflowClient(cfg.tracking.uri)
    output = Path(cfg.output).expanduser().resolve()
    logged = write(build(cfg, client), output, client, bool(cfg.report.log))
    print(f"report written to {output}")
    if logged:
        print(f"logged as an artifact of MLflow run {logged} (report/{output.name})")


#: The console script (pyproject's entry point): main, then no interpreter teardown.
entry = console_script(main)


if __name__ == "__main__":
    entry()
