"""Opening an Optuna study storage (SQLite file or a database server), shared by search and reporting.

Heartbeats let a later process fail a trial whose worker died, and retry its configuration once. ``postgresql://``
URLs use the psycopg 3 driver that nntune installs.
"""

from __future__ import annotations

import time
import warnings

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from nntune.errors import NNTuneError

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)


def normalize_url(url: str) -> str:
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


SQLITE_BUSY_TIMEOUT = 60  # seconds a process waits for another's write lock on a SQLite file before failing


def make_storage(url: str, heartbeat: int = 10) -> RDBStorage:
    """An RDB storage with heartbeats (a trial silent for twice ``heartbeat`` seconds counts as crashed).

    SQLite lets one process write at a time: with several workers on one file, each waits up to
    :data:`SQLITE_BUSY_TIMEOUT` seconds for the lock instead of failing at once (Python's default is 5 s, which
    heartbeats of busy workers exceed). For more than a few workers, use PostgreSQL."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    url = normalize_url(url)
    engine = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT}} if url.startswith("sqlite") else None
    for attempt in range(5):
        try:
            return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
        except (IntegrityError, OperationalError) as err:
            # workers starting together race to create the schema ("already exists", a duplicate key, a locked
            # file); the losers find it made on their next try
            racing = isinstance(err, IntegrityError) or any(
                words in str(err) for words in ("already exists", "database is locked"))
            if not racing or attempt == 4:
                raise NNTuneError(f"--storage {url}: cannot open the study storage ({err.__class__.__name__}: "
                                  f"{str(err).splitlines()[0]})") from None
            time.sleep(0.5 + attempt)
        except Exception as err:  # SQLAlchemy / driver errors: bad URL, server down, missing driver
            raise NNTuneError(f"--storage {url}: cannot open the study storage ({err.__class__.__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from None
    raise AssertionError("unreachable")
