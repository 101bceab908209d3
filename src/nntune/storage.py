"""Opening an Optuna study storage (SQLite file or a database server), shared by search and reporting.

Heartbeats let a later process fail a trial whose worker died, and retry its configuration once. ``postgresql://``
URLs use the psycopg 3 driver that nntune installs.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from nntune.errors import ArtifactError, NNTuneError
from nntune.redact import redact

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)


def normalize_url(url: str) -> str:
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def study_url(storage: str | None, out: Path) -> str:
    """The study's storage URL: ``storage``, or by default the SQLite file ``study.db`` in the run directory."""
    return storage or f"sqlite:///{(out / 'study.db').resolve()}"


SQLITE_BUSY_TIMEOUT = 60  # seconds a process waits for another's write lock on a SQLite file before failing
CONNECT_TIMEOUT = 10  # seconds to reach a database server (one that accepts and never answers would hang forever)
STATEMENT_TIMEOUT = 60  # seconds a PostgreSQL statement may run (heartbeats included) before the server cancels it


def engine_options(url: str) -> dict | None:
    """SQLAlchemy engine options: SQLite's busy timeout, or a server's connect and statement timeouts."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT}}
    if url.startswith("postgresql+psycopg"):
        return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT,
                                 "options": f"-c statement_timeout={STATEMENT_TIMEOUT * 1000}"}}
    if url.startswith("mysql"):
        return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT}}
    return None


def make_storage(url: str, heartbeat: int = 10) -> RDBStorage:
    """An RDB storage with heartbeats (a trial silent for twice ``heartbeat`` seconds counts as crashed).

    SQLite lets one process write at a time: with several workers on one file, each waits up to
    :data:`SQLITE_BUSY_TIMEOUT` seconds for the lock instead of failing at once (Python's default is 5 s, which
    heartbeats of busy workers exceed). For more than a few workers, use PostgreSQL; a server that does not answer
    within :data:`CONNECT_TIMEOUT` seconds is a one-line error."""
    from sqlalchemy.exc import DatabaseError, IntegrityError

    url = normalize_url(url)
    engine = engine_options(url)
    for attempt in range(5):
        try:
            return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
        except DatabaseError as err:
            # workers starting together race to create the schema (a table or PostgreSQL enum type that "already
            # exists", a duplicate key, a locked file); the losers find it made on their next try
            racing = isinstance(err, IntegrityError) or any(
                words in str(err) for words in ("already exists", "database is locked"))
            if not racing or attempt == 4:
                raise _cannot_open(url, err) from None
            time.sleep(0.5 + attempt)
        except Exception as err:  # SQLAlchemy / driver errors: bad URL, server down, missing driver
            raise _cannot_open(url, err) from None
    raise AssertionError("unreachable")


def _cannot_open(url: str, err: Exception) -> NNTuneError:
    detail = str(err).splitlines()[0] if str(err) else "no detail"
    return NNTuneError(redact(f"--storage {url}: cannot open the study storage ({err.__class__.__name__}: {detail})"))


def load_recorded_study(info: dict) -> optuna.Study:
    """The study a run directory's ``result.json`` names (``result["study"]``: its name and storage URL); a missing
    file or an unreachable server is an :class:`ArtifactError` naming the storage."""
    try:
        return optuna.load_study(study_name=info["name"], storage=make_storage(info["storage"]))
    except Exception as err:  # missing file, server down: say which storage
        raise ArtifactError(redact(f"cannot open study {info['name']!r} in {info['storage']} "
                                   f"({err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''})"))\
            from None


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's :func:`~optuna.storages.fail_stale_trials`, plus the trials of a process killed between ``ask`` and
    its first heartbeat: a RUNNING trial with no heartbeat at all, started longer than the grace period ago, is failed
    (and retried) the same way. Optuna skips those, and one would hold a slot of ``--trials`` forever."""
    import copy
    from datetime import datetime, timedelta, timezone

    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(study)
    storage = study._storage  # not public on Study; Optuna wraps an RDBStorage in a cache
    rdb = getattr(storage, "_backend", storage)
    if not isinstance(rdb, RDBStorage) or rdb.heartbeat_interval is None:
        return
    grace = timedelta(seconds=rdb.grace_period or 2 * rdb.heartbeat_interval)
    trials, beats = models.TrialModel.__table__, models.TrialHeartbeatModel.__table__
    query = (sqlalchemy.select(trials.c.trial_id, trials.c.datetime_start)
             .select_from(trials.outerjoin(beats, trials.c.trial_id == beats.c.trial_id))
             .where(trials.c.study_id == study._study_id, trials.c.state == TrialState.RUNNING,
                    beats.c.trial_heartbeat_id.is_(None)))
    with rdb.engine.connect() as conn:
        rows = conn.execute(query).all()
    now = datetime.now(timezone.utc).replace(tzinfo=None)  # Optuna stores datetime_start as naive UTC
    callback = rdb.get_heartbeat_stale_trial_callback()
    for trial_id, started in rows:
        if started is None or now - started <= grace:
            continue
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another process got there first
            continue
        if callback is not None:
            callback(study, copy.deepcopy(storage.get_trial(trial_id)))
