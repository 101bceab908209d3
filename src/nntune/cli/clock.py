"""When this command began, for budgets that count the whole command (``nntune tune --timeout``).

:data:`STARTED` is reassigned by :func:`start` (called from :func:`nntune.cli.main`), so read it as
``clock.STARTED`` at the time it is needed, never with ``from nntune.cli.clock import STARTED`` (a stale copy).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

STARTED = time.monotonic()  # when this command began (start() sets it; a monotonic clock reading)


def start(own_process: bool) -> None:
    """Set :data:`STARTED` to now, or, when the command owns its process (the console script, ``python -m
    nntune``), to when the process started, so that the interpreter's start-up and imports count too."""
    global STARTED
    STARTED = time.monotonic() - (process_age() if own_process else 0.0)


def process_age() -> float:
    """Seconds since this process started (from Linux's /proc; 0 elsewhere): the interpreter's start-up and imports
    count in ``--timeout`` too."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))  # field 22: the start time
    except (OSError, ValueError, IndexError):
        return 0.0
