"""``nscfate-train``: the Hydra app on conf/train.yaml, one tracked run. With ``search=...`` (``-m``)
nscfate's Optuna sweeper runs every trial through its own task (``nscfate.search.sweeper``)."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from nscfate.cli.entry import console_script  # noqa: E402
from nscfate.cli.errors import friendly_errors  # noqa: E402
from nscfate.paths import CONF_DIR, require_checkout  # noqa: E402  (registers ${nscfate.repo:})

require_checkout("nscfate-train")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
@friendly_errors("nscfate-train")
def main(cfg: DictConfig) -> float:
    """Train, evaluate and track one run; print its summary; return the objective."""
    from lightning.pytorch.utilities import rank_zero_only

    from nscfate.tracking.run import tracked_train
    from nscfate.tracking.summary import print_summary

    result = tracked_train(cfg)
    if rank_zero_only.rank == 0:  # DDP workers train but stay quiet
        print_summary(cfg, result)
    return result.objective


#: The console script (pyproject's entry point): main, then no interpreter teardown.
entry = console_script(main)


if __name__ == "__main__":
    entry()
