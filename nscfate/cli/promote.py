"""``nscfate-promote``: best trial / best run / a run -> registry version, gated against the champion."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from nscfate.cli.entry import console_script  # noqa: E402
from nscfate.cli.errors import friendly_errors  # noqa: E402
from nscfate.errors import NscfateError  # noqa: E402
from nscfate.paths import CONF_DIR, require_checkout  # noqa: E402  (registers ${nscfate.repo:})

require_checkout("nscfate-promote")


def pick_candidate(cfg: DictConfig, client):
    """The candidate named by exactly one of run_id, search.study or promote.experiment."""
    from nscfate.tracking.registry import best_run_of_experiment, candidate_from_run

    given = [
        k
        for k, v in (
            ("run_id", cfg.run_id),
            ("search.study", cfg.search.study),
            ("promote.experiment", cfg.promote.experiment),
        )
        if v
    ]
    if len(given) != 1:
        raise NscfateError(
            "name exactly one candidate: run_id=<id>, search.study=<study> or promote.experiment=<name>"
        )
    if cfg.run_id:
        return candidate_from_run(client, cfg.run_id)
    if cfg.promote.experiment:
        return best_run_of_experiment(
            client, cfg.promote.experiment, cfg.promote.metric, cfg.promote.get("direction")
        )
    from nscfate.search.best import best_trial_run

    run_id, origin = best_trial_run(cfg.search.study, cfg.search.storage)
    return candidate_from_run(client, run_id, origin)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="promote")
@friendly_errors("nscfate-promote")
def app(cfg: DictConfig) -> None:
    """Register the candidate as challenger, compare with the champion, print the table."""
    from mlflow import MlflowClient

    from nscfate.tracking.connection import connect
    from nscfate.tracking.registry import promote
    from nscfate.tracking.summary import print_promotion

    connect(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.get("artifact_location"))
    client = MlflowClient(cfg.tracking.uri)
    candidate = pick_candidate(cfg, client)
    decision = promote(
        client,
        cfg.promote.model_name,
        candidate,
        cfg.promote.metric,
        float(cfg.promote.min_delta),
        bool(cfg.promote.force),
        cfg.promote.get("direction"),
    )
    print_promotion(cfg.promote.model_name, candidate, decision)


def main() -> None:
    """Entry point: ``--force`` is accepted as a plain flag (it means promote.force=true)."""
    sys.argv = [("promote.force=true" if a == "--force" else a) for a in sys.argv]
    app()


#: The console script (pyproject's entry point): main, then no interpreter teardown.
entry = console_script(main)


if __name__ == "__main__":
    entry()
