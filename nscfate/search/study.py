"""Studies: samplers and pruners by name, a stable default study name, create-or-load."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import optuna
from omegaconf import DictConfig

from nscfate.errors import NscfateError
from nscfate.search.space import SearchSpace
from nscfate.search.storage import GRACE_SECONDS, HEARTBEAT_SECONDS, open_storage
from nscfate.training.recipe import AUTO

DIRECTIONS = ("maximize", "minimize")


def _tpe(cfg: DictConfig, space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    # constant_liar: trials running in other workers count as bad, so workers spread out
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=cfg.n_startup_trials, constant_liar=True
    )


def _random(cfg: DictConfig, space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def _gp(cfg: DictConfig, space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=cfg.n_startup_trials)


class ExhaustibleGridSampler(optuna.samplers.GridSampler):
    """GridSampler for ask/tell loops: Optuna's calls ``study.stop()`` when the grid is used up,
    which is only legal inside ``study.optimize``; the sweeper asks :meth:`exhausted` instead."""

    def after_trial(self, study, trial, state, values) -> None:
        pass

    def exhausted(self, study: optuna.Study) -> bool:
        """True when every grid point is taken (running ones included) and no retry waits.

        A failed point counts as visited, so a dead worker's point re-queued after the last free
        one was taken would otherwise end the sweep with its retry never run."""
        if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            return False
        return not self._get_unvisited_grid_ids(study)


def _grid(cfg: DictConfig, space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    return ExhaustibleGridSampler(space.grid(), seed=seed)


SAMPLERS: dict[str, Callable[[DictConfig, SearchSpace, int], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "random": _random,
    "gp": _gp,
    "grid": _grid,
}

PRUNERS: dict[str, Callable[[DictConfig, int | str], optuna.pruners.BasePruner]] = {
    "median": lambda cfg, epochs: optuna.pruners.MedianPruner(
        n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps
    ),
    # trainer.max_epochs=auto: the data decides each trial's length, so Optuna estimates it too
    "hyperband": lambda cfg, epochs: optuna.pruners.HyperbandPruner(
        min_resource=1, max_resource="auto" if epochs == AUTO else max(int(epochs), 2)
    ),
    "none": lambda cfg, epochs: optuna.pruners.NopPruner(),
}


def study_name(search: DictConfig, space: SearchSpace, metric: str) -> str:
    """``search.study`` if set, else a name derived from the space so the same command resumes."""
    if search.get("study"):
        return str(search.study)
    spec = {k: repr(v) for k, v in sorted(space.distributions.items())} | {
        "fixed": sorted(space.fixed)
    }
    digest = hashlib.sha256(json.dumps([spec, metric, search.direction]).encode()).hexdigest()[:8]
    return f"{search.get('name') or 'sweep'}-{digest}"


def load_study(
    search: DictConfig, space: SearchSpace, name: str, max_epochs: int | str
) -> optuna.Study:
    """Create the study, or load it if it exists (resume, or another worker). Call it under the
    storage lock: each worker that joins gets its own sampler seed."""
    if search.direction not in DIRECTIONS:
        raise NscfateError(f"search.direction={search.direction!r}: expected maximize or minimize")
    if search.sampler not in SAMPLERS:
        raise NscfateError(
            f"search.sampler={search.sampler!r}: expected one of {', '.join(SAMPLERS)}"
        )
    if search.pruner not in PRUNERS:
        raise NscfateError(f"search.pruner={search.pruner!r}: expected one of {', '.join(PRUNERS)}")
    if not space.distributions:
        raise NscfateError(
            "the search space is empty: give e.g. 'model=choice(small_cnn,resnet18)' or search=<space>"
        )
    storage = open_storage(
        search.storage,
        search.get("heartbeat_interval", HEARTBEAT_SECONDS),
        search.get("grace_period", GRACE_SECONDS),
    )
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=SAMPLERS[search.sampler](search, space, search.seed),
            pruner=PRUNERS[search.pruner](search, max_epochs),
            direction=search.direction,
            load_if_exists=True,
        )
    except ValueError as err:
        raise NscfateError(f"study {name!r} in {search.storage}: {err}") from err
    # Workers that start together must not draw the same points: each one that joins the study
    # (under the storage lock) seeds its sampler apart; the first keeps search.seed. Not the grid:
    # its grid ids index a seed-shuffled grid, so every worker must shuffle it the same way.
    joined = int(study.user_attrs.get("workers_joined", 0))
    study.set_user_attr("workers_joined", joined + 1)
    if joined and search.sampler != "grid":
        study.sampler = SAMPLERS[search.sampler](search, space, search.seed + joined)
    return study
