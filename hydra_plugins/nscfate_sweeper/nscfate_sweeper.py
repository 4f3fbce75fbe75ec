"""Hydra discovers sweepers in the ``hydra_plugins`` namespace package; this is nscfate's.

Kept import-light (Hydra imports every plugin at start-up); the work is in
``nscfate.search.sweeper``. Select it with ``hydra/sweeper=nscfate_optuna`` (the ``search`` configs do).
"""

import sys
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class NscfateOptunaSweeperConf:
    _target_: str = "hydra_plugins.nscfate_sweeper.nscfate_sweeper.NscfateOptunaSweeper"


ConfigStore.instance().store(
    group="hydra/sweeper", name="nscfate_optuna", node=NscfateOptunaSweeperConf, provider="nscfate"
)


class NscfateOptunaSweeper(Sweeper):
    """Optuna >= 5 study over Hydra overrides, with pruning, resume, workers and MLflow nesting."""

    def __init__(self) -> None:
        from nscfate.search.sweeper import OptunaSweeper

        self.impl = OptunaSweeper()

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        from nscfate.cli.errors import one_line
        from nscfate.errors import user_error_in

        try:
            return self.impl.sweep(arguments)
        except Exception as err:
            if user_error_in(err) is None:
                raise
            print(f"nscfate-train: error: {one_line(err)}", file=sys.stderr)
            sys.exit(1)
