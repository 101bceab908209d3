"""Opening storages: workers that start together race to create the schema; the losers retry and succeed."""

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from nntune import storage
from nntune.errors import NNTuneError


class _Orig(Exception):
    pass


@pytest.mark.parametrize("error", [
    ProgrammingError("CREATE TYPE", {}, _Orig('type "studydirection" already exists')),  # PostgreSQL enum race
    IntegrityError("INSERT", {}, _Orig("duplicate key value violates unique constraint")),
    OperationalError("CREATE TABLE", {}, _Orig("database is locked")),
])
def test_a_schema_creation_race_is_retried(monkeypatch, tmp_path, error):
    real, calls = storage.RDBStorage, []

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(storage, "RDBStorage", racing)
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    assert storage.make_storage(f"sqlite:///{tmp_path / 'x.db'}") is not None and len(calls) == 2


def test_other_database_errors_are_one_line_errors_at_once(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise ProgrammingError("SELECT", {}, _Orig("permission denied for schema public"))

    monkeypatch.setattr(storage, "RDBStorage", broken)
    with pytest.raises(NNTuneError, match="cannot open the study storage .*permission denied"):
        storage.make_storage(f"sqlite:///{tmp_path / 'x.db'}")
