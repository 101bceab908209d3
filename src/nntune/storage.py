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


def make_storage(url: str, heartbeat: int = 10) -> RDBStorage:
    """An RDB storage with heartbeats (a trial silent for twice ``heartbeat`` seconds counts as crashed)."""
    from sqlalchemy.exc import IntegrityError

    url = normalize_url(url)
    for attempt in range(3):
        try:
            return RDBStorage(url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
        except IntegrityError:
            # workers starting together race to create the schema; the loser finds it made on its next try
            if attempt == 2:
                raise
            time.sleep(1 + attempt)
        except Exception as err:  # SQLAlchemy / driver errors: bad URL, server down, missing driver
            raise NNTuneError(f"--storage {url}: cannot open the study storage ({err.__class__.__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from None
    raise AssertionError("unreachable")
