"""Optuna storages by URL, a lock per storage, and exact trial accounting across workers.

- ``sqlite:///<abs path>/optuna.db`` (default; never the MLflow database), ``postgresql://...``,
  ``mysql://...``: RDBStorage with heartbeats. Liveness rests on them alone (a host name and a
  process id say little across machines and containers): a trial whose worker stopped beating for
  ``grace_period`` seconds is failed and retried with the same parameters.
- ``journal:///<abs path>/optuna.log`` (or a path ending in ``.log``/``.journal``): Optuna's journal
  file storage, safe on NFS; it has no heartbeat, so dead workers on this host are found by
  process id.

Every worker looks for dead workers' trials each time it takes a trial, so a sweep recovers while it
runs, not only when it is restarted.

``search.n_trials`` is the study's total: workers take a trial slot under a lock held on the storage
(a file lock for SQLite and journal files, an advisory lock for PostgreSQL), so several processes
together finish exactly ``n_trials``.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from nscfate.errors import NscfateError
from nscfate.files import file_lock

#: Defaults of search.heartbeat_interval and search.grace_period (seconds).
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 30
#: A trial that a dead worker left behind is re-run with the same parameters at most this often.
MAX_RETRY = 3
_RDB = ("sqlite:", "postgresql", "mysql")


def journal_path(url: str) -> Path | None:
    """The file of a journal storage URL, or None for a database URL."""
    if url.startswith("journal://"):
        return Path(url.removeprefix("journal://"))
    if not url.startswith(_RDB) and url.endswith((".log", ".journal")):
        return Path(url)
    return None


def open_storage(
    url: str, heartbeat_interval: int = HEARTBEAT_SECONDS, grace_period: int = GRACE_SECONDS
) -> BaseStorage:
    """An Optuna storage for ``url``, checked to be reachable (NscfateError naming the URL if not).

    Database storages record a heartbeat every ``heartbeat_interval`` seconds while a trial runs; a
    trial silent for ``grace_period`` seconds is stale."""
    if (path := journal_path(url)) is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as err:
            raise NscfateError(
                f"search.storage={url}: cannot open journal file {path}: {err}"
            ) from err
    if not url.startswith(_RDB):
        raise NscfateError(
            f"search.storage={url}: expected sqlite:///<path>, postgresql://..., mysql://... or journal:///<path>"
        )
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine_kwargs = (
        {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    )
    if url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 5}
    try:
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
        )
    except Exception as err:
        raise NscfateError(
            f"search.storage={url} is unreachable: {str(err).splitlines()[0]}"
        ) from err


@contextmanager
def storage_lock(url: str, study_name: str) -> Iterator[None]:
    """Hold a lock shared by every worker of ``study_name`` on this storage (see ``has_lock``)."""
    if url.startswith("postgresql"):
        with _advisory_lock(url, study_name):
            yield
        return
    path = _lock_path(url)
    if path is None:
        # MySQL and others: no cross-process lock; counts may overshoot by a trial per worker.
        yield
        return
    with file_lock(path.with_name(f"{path.name}.{_key(study_name)}.lock")):
        yield


def has_lock(url: str) -> bool:
    """Whether ``storage_lock`` really excludes other workers on this storage."""
    return url.startswith("postgresql") or _lock_path(url) is not None


def _lock_path(url: str) -> Path | None:
    if (path := journal_path(url)) is not None:
        return path
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


@contextmanager
def _advisory_lock(url: str, study_name: str) -> Iterator[None]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(
        url, poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": 5}
    )
    key = int(_key(study_name), 16) & 0x7FFFFFFFFFFFFFFF
    try:
        conn = engine.connect()
    except Exception as err:
        raise NscfateError(
            f"search.storage={url} is unreachable: {str(err).splitlines()[0]}"
        ) from err
    with conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})


def _key(study_name: str) -> str:
    return hashlib.sha256(study_name.encode()).hexdigest()[:15]


def worker_id() -> str:
    """host:pid of this process, stored on the trials it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(trial: optuna.Trial) -> None:
    """Mark ``trial`` as run by this worker; call it under ``storage_lock`` right after ``ask``."""
    trial.set_user_attr("worker", worker_id())


def standing_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's trials minus failed ones that were re-queued (their retries stand in for them)."""
    trials = study.get_trials(deepcopy=False)
    replaced = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [t for t in trials if not (t.state == TrialState.FAIL and t.number in replaced)]


def counted_trials(study: optuna.Study) -> int:
    """Trials that count toward ``n_trials``: standing trials that are not still waiting."""
    return sum(1 for t in standing_trials(study) if t.state != TrialState.WAITING)


def recover_dead_trials(study: optuna.Study, locked: bool) -> list[int]:
    """Fail and re-queue RUNNING trials whose worker is gone: a stale heartbeat on database
    storages, a dead process on this host for the journal file (which has no heartbeat).

    ``locked``: the caller holds ``storage_lock`` and workers ``claim`` trials under it, so a RUNNING
    trial nobody claimed belongs to a worker killed between ``ask`` and ``claim``.
    Returns the numbers of the trials that were recovered.
    """
    storage = study._storage
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    heartbeat = _has_heartbeat(storage)
    if heartbeat:  # stale ones are failed and re-queued by the storage's own callback
        optuna.storages.fail_stale_trials(study)
    retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = str(t.user_attrs.get("worker", ""))
        if who and not heartbeat and _died_here(who):
            error = f"worker {who} died"
        elif not who and locked:
            error = "its worker died between asking for it and starting it"
        else:
            continue
        storage.set_trial_user_attr(t._trial_id, "error", error)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        retry(study, storage.get_trial(t._trial_id))
    still = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    return sorted(before - still)


def watchable_running_trials(study: optuna.Study) -> list[FrozenTrial]:
    """RUNNING trials whose worker's death this process would notice (heartbeats on database
    storages; a journal's workers on this host): worth waiting for, since they may need a re-run."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if _has_heartbeat(study._storage):
        return running
    here = socket.gethostname()
    return [t for t in running if str(t.user_attrs.get("worker", "")).rpartition(":")[0] == here]


def _has_heartbeat(storage: BaseStorage) -> bool:
    return isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage)


def _died_here(who: str) -> bool:
    """Whether ``who`` (host:pid) is a worker on this host that no longer runs."""
    host, _, pid = who.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    return (
        not cmdline.exists()
        or b"nscfate" in cmdline.read_bytes()
        or b"python" in cmdline.read_bytes()
    )
