"""Connect to an MLflow tracking store: explicit URI, reachable, experiment with a fixed artifact root."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from nscfate.errors import NscfateError
from nscfate.paths import REPO_ROOT
from nscfate.redact import has_secret

# A tracking server that is down when a command starts is one line at once (check_reachable); one
# that restarts while a run logs is waited for: 5 retries, 2 s doubling, about a minute (MLflow's
# own default, 7, waits minutes).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def check_reachable(uri: str) -> None:
    """Raise NscfateError naming ``uri`` when the tracking store cannot be reached."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:
                resp.read()
        except (urllib.error.URLError, OSError) as err:
            raise NscfateError(
                f"tracking.uri={uri} is unreachable: {getattr(err, 'reason', err)}"
            ) from err
    elif uri.startswith("sqlite:///"):
        parent = Path(uri.removeprefix("sqlite:///")).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise NscfateError(f"tracking.uri={uri}: cannot create {parent}: {err}") from err
    elif uri.startswith(("postgresql", "mysql", "mssql")):
        _check_database(uri)
    elif uri.startswith("file:") or "://" not in uri:
        raise NscfateError(
            f"tracking.uri={uri}: the MLflow file store is not supported; use sqlite:///<abs path>/mlflow.db, "
            "a database URL or an http(s) tracking server"
        )


def _check_database(uri: str) -> None:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(
            uri, connect_args={"connect_timeout": 5} if "postgres" in uri else {}
        )
        with engine.connect():
            pass
    except Exception as err:
        raise NscfateError(
            f"tracking.uri={uri} is unreachable: {str(err).splitlines()[0]}"
        ) from err


def connect(uri: str, experiment: str, artifact_location: str | None = None) -> str:
    """Point MLflow at ``uri`` and return the id of ``experiment`` (created if missing).

    A new experiment gets ``artifact_location`` as its artifact root (for a local SQLite store the
    repository's mlruns/artifacts) so artifacts never land in the current directory.
    """
    check_reachable(uri)
    if has_secret(uri):  # MLflow prints a server's run URL, credentials and all
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = _artifact_root(uri, artifact_location, experiment)
    try:
        return client.create_experiment(experiment, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        found = client.get_experiment_by_name(experiment)  # another process created it meanwhile
        if found is None:
            raise
        return found.experiment_id


def _artifact_root(uri: str, artifact_location: str | None, experiment: str) -> str | None:
    """Artifacts of a SQLite store sit beside it (``<db dir>/artifacts``) unless set explicitly."""
    if uri.startswith(("http://", "https://")):
        return None  # a server decides where its artifacts go
    if artifact_location:
        root = Path(artifact_location).expanduser().resolve()
    elif uri.startswith("sqlite:///"):
        root = Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
    else:
        root = REPO_ROOT / "mlruns" / "artifacts"
    root.mkdir(parents=True, exist_ok=True)
    return (root / experiment.replace("/", "_")).as_uri()
