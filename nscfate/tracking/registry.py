"""The model registry: register a candidate, compare it with the champion on one test split, gate.

Aliases, not stages: a newly registered version becomes ``challenger``; ``champion`` moves only when
the challenger beats it on the objective by at least ``min_delta`` on the *same* test split (same
split digest), or when forced. Both versions are tagged with what was compared, the figures and why.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from nscfate.data.schema import CLASSES
from nscfate.data.splits import TEST
from nscfate.data.store import open_store
from nscfate.errors import NscfateError
from nscfate.tracking.predict import load_model
from nscfate.training.evaluate import PROB_COLUMNS, classification_metrics

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass
class Candidate:
    """A tracked run whose pyfunc model may be promoted."""

    run_id: str
    model_uri: str
    split_digest: str
    dataset_path: str
    origin: str  # how it was picked: run id, best trial of a study, best run of an experiment


@dataclass
class Decision:
    """The outcome of a promotion, for the table and the tags."""

    challenger: ModelVersion
    champion_before: ModelVersion | None
    metric: str
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)
    promoted: bool = False
    reason: str = ""


def candidate_from_run(client: MlflowClient, run_id: str, origin: str | None = None) -> Candidate:
    """The candidate model of a training run (it must carry a logged pyfunc model)."""
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise NscfateError(f"run_id={run_id} not found in {client.tracking_uri}") from err
    tags = run.data.tags
    missing = [
        t
        for t in ("nscfate.model_uri", "nscfate.split_digest", "nscfate.dataset_path")
        if t not in tags
    ]
    if missing or run.info.status != "FINISHED":
        raise NscfateError(
            f"run {run_id} ({run.info.status}) is not a finished nscfate training run with a logged model"
            + (f" (lacks tags {missing})" if missing else "")
        )
    return Candidate(
        run_id,
        tags["nscfate.model_uri"],
        tags["nscfate.split_digest"],
        tags["nscfate.dataset_path"],
        origin or f"run {run_id}",
    )


def best_run_of_experiment(client: MlflowClient, experiment: str, metric: str) -> Candidate:
    """The finished training run (not a study's parent) with the highest ``metric`` in ``experiment``."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise NscfateError(
            f"promote.experiment={experiment!r}: no such MLflow experiment in {client.tracking_uri}"
        )
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        order_by=[f"metrics.`{metric}` DESC"],
        max_results=500,
    )
    runs = [r for r in runs if "nscfate.model_uri" in r.data.tags and metric in r.data.metrics]
    if not runs:
        raise NscfateError(
            f"experiment {experiment!r} has no finished run with a model and metric {metric}"
        )
    return candidate_from_run(
        client, runs[0].info.run_id, f"best run of experiment {experiment} by {metric}"
    )


def register(client: MlflowClient, name: str, candidate: Candidate) -> ModelVersion:
    """Register the candidate's model as a new version of ``name`` and make it the challenger."""
    try:
        version = mlflow.register_model(
            candidate.model_uri,
            name,
            await_registration_for=300,
            tags={
                "nscfate.source_run": candidate.run_id,
                "nscfate.origin": candidate.origin,
                "nscfate.split_digest": candidate.split_digest,
            },
        )
    except MlflowException as err:
        raise NscfateError(
            f"cannot register {candidate.model_uri} as {name!r}: {err.message}"
        ) from err
    _wait_ready(client, name, version.version)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return client.get_model_version(name, version.version)


def _wait_ready(client: MlflowClient, name: str, version: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while (status := client.get_model_version(name, version).status) != "READY":
        if status == "FAILED_REGISTRATION" or time.time() > deadline:
            raise NscfateError(
                f"registration of {name} version {version} did not complete ({status})"
            )
        time.sleep(0.5)


def current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version the ``champion`` alias points at, if any (read via the model, not a search)."""
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException:
        return None
    return client.get_model_version(name, aliases[CHAMPION]) if CHAMPION in aliases else None


def test_split_crops(candidate: Candidate) -> tuple[np.ndarray, pd.DataFrame]:
    """Raw crops and index rows of the candidate run's test split (from its store and split file)."""
    store = open_store(candidate.dataset_path)
    split_file = store.path / "splits" / f"{candidate.split_digest[:16]}.csv"
    if not split_file.is_file():
        raise NscfateError(
            f"the test split {candidate.split_digest[:16]} is not saved next to {store.path}"
        )
    split = pd.read_csv(split_file, keep_default_na=False)["split"]
    rows = np.flatnonzero((split == TEST).to_numpy())
    return np.asarray(store.images[rows]), store.index.iloc[rows].reset_index(drop=True)


def score_model(model_uri: str, crops: np.ndarray, cells: pd.DataFrame) -> dict[str, float]:
    """Load a registered/logged pyfunc model and compute the test metrics on raw crops."""
    probs = load_model(model_uri).predict(crops.astype(np.float32))
    table = cells[["label", "day"]].copy()
    table[PROB_COLUMNS] = probs[list(CLASSES)].to_numpy()
    table["predicted"] = probs["fate"].to_numpy()
    return classification_metrics(table)


def promote(
    client: MlflowClient,
    name: str,
    candidate: Candidate,
    metric: str,
    min_delta: float,
    force: bool,
) -> Decision:
    """Register the candidate, compare it with the champion on the same test split, move the alias."""
    champion = current_champion(client, name)
    if champion is not None and not force:
        theirs = champion.tags.get("nscfate.split_digest")
        if theirs != candidate.split_digest:
            raise NscfateError(
                f"champion {name} v{champion.version} was tested on split {str(theirs)[:12]}, the candidate on "
                f"{candidate.split_digest[:12]}: not comparable (retrain on the same data and split, or --force)"
            )
    crops, cells = test_split_crops(candidate)
    version = register(client, name, candidate)
    decision = Decision(version, champion, metric)
    decision.challenger_metrics = score_model(f"models:/{name}/{version.version}", crops, cells)
    if champion is not None:
        decision.champion_metrics = score_model(f"models:/{name}/{champion.version}", crops, cells)
    _decide(decision, min_delta, force)
    _record(client, name, decision, min_delta)
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    return decision


def _decide(d: Decision, min_delta: float, force: bool) -> None:
    new = d.challenger_metrics.get(d.metric, math.nan)
    if d.metric not in d.challenger_metrics:
        raise NscfateError(
            f"promote.metric={d.metric!r} is not a test metric (e.g. test/f1_macro, test/acc)"
        )
    if d.champion_before is None:
        d.promoted, d.reason = True, "no champion yet"
    elif force:
        d.promoted, d.reason = True, "forced"
    else:
        old = d.champion_metrics[d.metric]
        gain = new - old
        d.promoted = gain > 0 and gain >= min_delta  # better, and by at least min_delta
        need = f"better by >= {min_delta}" if min_delta > 0 else "better"
        d.reason = f"{d.metric} {new:.4f} vs {old:.4f} ({gain:+.4f}); needs {need}"


def _record(client: MlflowClient, name: str, d: Decision, min_delta: float) -> None:
    verdict = "promoted to champion" if d.promoted else "not promoted"
    against = f"v{d.champion_before.version}" if d.champion_before else "no champion"
    tags = {
        "nscfate.compared_with": against,
        "nscfate.compared_metric": d.metric,
        "nscfate.min_delta": str(min_delta),
        "nscfate.decision": f"{verdict}: {d.reason}",
    }
    tags |= {
        f"nscfate.{k}": f"{v:.6f}"
        for k, v in d.challenger_metrics.items()
        if not k.startswith("test/acc_day")
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, d.challenger.version, key, value)
    if d.champion_before is not None:
        outcome = "dethroned by" if d.promoted else "defended against"
        client.set_model_version_tag(
            name,
            d.champion_before.version,
            "nscfate.last_challenge",
            f"{outcome} v{d.challenger.version}: {d.reason}",
        )
