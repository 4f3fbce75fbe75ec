"""The model registry: score a candidate against the champion on one test split, then gate.

Aliases, not stages. The candidate (a run's logged model) and the ``champion`` are both scored on the
candidate's test split, taken cell by cell (``source``) from the split saved with the data and
checked against the run's split digest, before anything is registered. Only a candidate that beats
the champion on the metric by at least ``min_delta`` (lower is better for calibration errors and
losses), or a forced one, becomes a new version, ``challenger`` and ``champion``; a refused candidate
creates no version. The gate fails closed: an error reading or scoring the champion stops the
promotion; only a registry that truly has no champion takes the candidate as champion.
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
from nscfate.data.splits import TEST, split_digest
from nscfate.data.store import open_store
from nscfate.errors import NscfateError
from nscfate.evaluation.evaluate import PROB_COLUMNS, TEST_METRICS, classification_metrics
from nscfate.tracking.predict import load_model
from nscfate.tracking.pyfunc import MODEL_URI_TAG, has_model, run_model_uri

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

    candidate: Candidate
    champion_before: ModelVersion | None
    metric: str
    direction: str
    challenger: ModelVersion | None = None  # the new version; None when the candidate was refused
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)
    promoted: bool = False
    reason: str = ""


DIRECTIONS = ("maximize", "minimize")


def metric_direction(metric: str, override: str | None = None) -> str:
    """``maximize`` or ``minimize``: calibration errors and losses are better lower."""
    if override:
        if override not in DIRECTIONS:
            raise NscfateError(f"promote.direction={override!r}: expected maximize or minimize")
        return override
    name = metric.rsplit("/", 1)[-1]
    return "minimize" if name.startswith("ece") or "loss" in name else "maximize"


def candidate_from_run(client: MlflowClient, run_id: str, origin: str | None = None) -> Candidate:
    """The candidate model of a training run: its logged pyfunc model, or for a sweep trial that
    deferred it, one built now from its checkpoint (``nscfate.tracking.pyfunc.run_model_uri``)."""
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise NscfateError(f"run_id={run_id} not found in {client.tracking_uri}") from err
    tags = run.data.tags
    missing = [t for t in ("nscfate.split_digest", "nscfate.dataset_path") if t not in tags]
    missing = ([] if has_model(tags) else [MODEL_URI_TAG]) + missing
    if missing or run.info.status != "FINISHED":
        raise NscfateError(
            f"run {run_id} ({run.info.status}) is not a finished nscfate training run with a logged model"
            + (f" (lacks tags {missing})" if missing else "")
        )
    return Candidate(
        run_id,
        run_model_uri(client, run_id),
        tags["nscfate.split_digest"],
        tags["nscfate.dataset_path"],
        origin or f"run {run_id}",
    )


def best_run_of_experiment(
    client: MlflowClient, experiment: str, metric: str, direction: str | None = None
) -> Candidate:
    """The finished training run (not a study's parent) with the best ``metric`` in ``experiment``."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise NscfateError(
            f"promote.experiment={experiment!r}: no such MLflow experiment in {client.tracking_uri}"
        )
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        order_by=[
            f"metrics.`{metric}` {'ASC' if metric_direction(metric, direction) == 'minimize' else 'DESC'}"
        ],
        max_results=500,
    )
    runs = [r for r in runs if metric in r.data.metrics and has_model(r.data.tags)]
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
    """The version the ``champion`` alias points at; None only when there truly is none (no such
    registered model, or no alias). Any other error stops the promotion (fail closed)."""
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise _unreadable_champion(name, err) from err
    if CHAMPION not in aliases:
        return None
    try:
        return client.get_model_version(name, aliases[CHAMPION])
    except MlflowException as err:
        raise _unreadable_champion(name, err) from err


def _unreadable_champion(name: str, err: MlflowException) -> NscfateError:
    return NscfateError(
        f"cannot read the champion of {name!r}: {err.message.splitlines()[0]}; promotion stopped, "
        "nothing registered"
    )


def test_split_crops(candidate: Candidate) -> tuple[np.ndarray, pd.DataFrame]:
    """Raw crops and index rows of the candidate run's test split: the split saved with the data,
    joined to the store cell by cell (``source``), must give the run's split digest."""
    store = open_store(candidate.dataset_path)
    split_file = store.path / "splits" / f"{candidate.split_digest[:16]}.csv"
    if not split_file.is_file():
        raise NscfateError(
            f"the test split {candidate.split_digest[:16]} is not saved next to {store.path}"
        )
    saved = pd.read_csv(split_file, keep_default_na=False, dtype=str)
    if saved["source"].duplicated().any() or set(saved["source"]) != set(store.index["source"]):
        raise NscfateError(f"{split_file} does not list the cells of {store.path} once each")
    split = store.index["source"].map(saved.set_index("source")["split"])
    if split_digest(store.index, split) != candidate.split_digest:
        raise NscfateError(
            f"{split_file} does not give the run's split digest {candidate.split_digest[:16]} "
            "(the split file or the store changed since the run)"
        )
    rows = np.flatnonzero((split == TEST).to_numpy())
    return np.asarray(store.images[rows]), store.index.iloc[rows].reset_index(drop=True)


def score_model(model_uri: str, crops: np.ndarray, cells: pd.DataFrame) -> dict[str, float]:
    """Load a registered/logged pyfunc model and compute the test metrics on raw crops; any
    failure is a one-line error naming the model."""
    try:
        probs = load_model(model_uri).predict(crops.astype(np.float32))
    except NscfateError:
        raise
    except Exception as err:
        raise NscfateError(f"cannot score {model_uri}: {type(err).__name__}: {err}") from err
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
    direction: str | None = None,
) -> Decision:
    """Score the candidate and the champion on the candidate's test split; register the candidate
    and move ``champion`` only if it wins (or ``force``). Nothing is registered before the decision."""
    champion = current_champion(client, name)
    if champion is not None and not force:
        theirs = champion.tags.get("nscfate.split_digest")
        if theirs != candidate.split_digest:
            raise NscfateError(
                f"champion {name} v{champion.version} was tested on split {str(theirs)[:12]}, the candidate on "
                f"{candidate.split_digest[:12]}: not comparable (retrain on the same data and split, or --force)"
            )
    crops, cells = test_split_crops(candidate)
    decision = Decision(candidate, champion, metric, metric_direction(metric, direction))
    decision.challenger_metrics = score_model(candidate.model_uri, crops, cells)
    if champion is not None:
        decision.champion_metrics = score_model(f"models:/{name}/{champion.version}", crops, cells)
    _decide(decision, min_delta, force)
    if decision.promoted:
        decision.challenger = register(client, name, candidate)
        client.set_registered_model_alias(name, CHAMPION, decision.challenger.version)
    _record(client, name, decision, min_delta)
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
        gain = new - old if d.direction == "maximize" else old - new
        d.promoted = gain > 0 and gain >= min_delta  # better, and by at least min_delta
        need = f"better by >= {min_delta}" if min_delta > 0 else "better"
        lower = " (lower is better)" if d.direction == "minimize" else ""
        d.reason = f"{d.metric} {new:.4f} vs {old:.4f}{lower}; needs {need}"


def _record(client: MlflowClient, name: str, d: Decision, min_delta: float) -> None:
    """Tag the new version (if any) and the champion it challenged with the figures and why."""
    verdict = "promoted to champion" if d.promoted else "not promoted"
    against = f"v{d.champion_before.version}" if d.champion_before else "no champion"
    if d.challenger is not None:
        tags = {
            "nscfate.compared_with": against,
            "nscfate.compared_metric": d.metric,
            "nscfate.min_delta": str(min_delta),
            "nscfate.decision": f"{verdict}: {d.reason}",
        }
        tags |= {
            f"nscfate.{k}": f"{v:.6f}"
            for k, v in d.challenger_metrics.items()
            if k in TEST_METRICS  # the headline figures, not one per day
        }
        for key, value in tags.items():
            client.set_model_version_tag(name, d.challenger.version, key, value)
    if d.champion_before is not None:
        who = f"v{d.challenger.version}" if d.challenger else f"run {d.candidate.run_id}"
        outcome = "dethroned by" if d.promoted else "defended against"
        client.set_model_version_tag(
            name,
            d.champion_before.version,
            "nscfate.last_challenge",
            f"{outcome} {who}: {d.reason}",
        )
