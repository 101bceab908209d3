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


def test_a_server_that_accepts_and_never_answers_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    """It used to hang with no output: the connect now times out, and the password stays out of the message."""
    import socket
    import threading
    import time

    from nntune.cli import main

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []
    threading.Thread(target=lambda: [held.append(server.accept()) for _ in range(8)], daemon=True).start()
    monkeypatch.setattr(storage, "CONNECT_TIMEOUT", 1)
    port = server.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(SystemExit) as exc:
        main(["tune", "--storage", f"postgresql://bob:hunter2@127.0.0.1:{port}/db", "--trials", "1", "--quiet",
              "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    server.close()
    assert exc.value.code == 2 and time.monotonic() - started < 30
    assert len(err.splitlines()) == 1 and "cannot open the study storage" in err and "timeout" in err, err
    assert "hunter2" not in err and f"bob@127.0.0.1:{port}/db" in err


def test_server_urls_get_connect_and_statement_timeouts():
    pg = storage.engine_options("postgresql+psycopg://u@h/db")["connect_args"]
    assert pg["connect_timeout"] == storage.CONNECT_TIMEOUT
    assert pg["options"] == f"-c statement_timeout={storage.STATEMENT_TIMEOUT * 1000}"
    assert storage.engine_options("sqlite:///x.db") == {"connect_args": {"timeout": storage.SQLITE_BUSY_TIMEOUT}}
