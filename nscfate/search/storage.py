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

import functools
import hashlib
import logging
import os
import socket
import time
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

log = logging.getLogger(__name__)

#: Defaults of search.heartbeat_interval and search.grace_period (seconds).
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 30
#: A trial that a dead worker left behind is re-run with the same parameters at most this often.
MAX_RETRY = 3
_RDB = ("sqlite:", "postgresql", "mysql")
#: How long a storage call keeps retrying while its database server is gone (a restart, a
#: fail-over) before the error stands.
OUTAGE_SECONDS = 120


def connection_lost(err: BaseException) -> bool:
    """Whether ``err`` (or its cause) is a lost or refused database connection, which a retry
    on a fresh connection may cure, rather than an error in what was asked."""
    import sqlalchemy.exc

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.OperationalError) or (
            isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def retry_outage(call, what: str, seconds: float = OUTAGE_SECONDS, pause: float = 1.0):
    """``call()``, retried every ``pause`` seconds while the database connection is lost, for up
    to ``seconds``; any other error, or an outage longer than that, is raised."""
    deadline = time.monotonic() + seconds
    warned = False
    while True:
        try:
            return call()
        except Exception as err:
            if not connection_lost(err) or time.monotonic() > deadline:
                raise
            if not warned:
                log.warning("%s: database connection lost, retrying: %s", what, _first_line(err))
                warned = True
            time.sleep(pause)


def _first_line(err: BaseException) -> str:
    return (str(err.__cause__ or err).strip().splitlines() or [""])[0]


class ResilientRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose calls ride out a database restart (``retry_outage``): a sweep,
    its heartbeats and its pruning reports go on once the server is back, instead of failing the
    trial or killing the heartbeat thread (which would have the trial reaped as dead)."""


def _resilient(name: str):
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return retry_outage(lambda: method(self, *args, **kwargs), f"optuna storage {name}")

    return call


for _name in [
    "create_new_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_all_trials",
    "get_best_trial",
    "record_heartbeat",
    "_get_stale_trial_ids",
]:
    setattr(ResilientRDBStorage, _name, _resilient(_name))


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
        return ResilientRDBStorage(
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
    try:  # a server that is restarting is waited for; one never reached is an error at once
        conn = retry_outage(engine.connect, "storage lock", seconds=_outage_allowance(url))
    except Exception as err:
        raise NscfateError(
            f"search.storage={url} is unreachable: {str(err).splitlines()[0]}"
        ) from err
    with conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            try:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            except Exception as err:  # the server went away: its session, and the lock, are gone
                if not connection_lost(err):
                    raise
                log.warning("storage lock: connection lost while held: %s", _first_line(err))


#: Storages this process reached once: waiting out an outage of one of them is worth it.
_REACHED: set[str] = set()


def mark_started(url: str) -> None:
    """Tell the storage lock that this process reached ``url`` once, so later connection
    failures there are outages to wait out rather than a wrong URL to report at once."""
    _REACHED.add(url)


def _outage_allowance(url: str) -> float:
    return OUTAGE_SECONDS if url in _REACHED else 0.0


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
