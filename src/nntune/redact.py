"""Passwords never leave the process: a storage URL's password is dropped from every message and file nntune writes
(``postgresql://user:secret@host/db`` -> ``postgresql://user@host/db``). A reader that reopens a recorded study
(report, explain) connects without it, so PostgreSQL takes it from ``PGPASSWORD`` or ``~/.pgpass``."""

from __future__ import annotations

import re
from typing import Any

_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*):[^@/\s]*@", re.IGNORECASE)


def redact(value: Any) -> Any:
    """``value`` (a string, or dicts and lists of them) with the password of every URL in it removed."""
    if isinstance(value, str):
        return _PASSWORD.sub(r"\1@", value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value
