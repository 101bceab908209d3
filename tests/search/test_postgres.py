"""Many workers on one PostgreSQL study (the server comes from scripts/with_postgres.sh, as in `make test`)."""

import json
import os
import subprocess
import sys
import uuid

import optuna
import pytest

URL = os.environ.get("NNTUNE_TEST_POSTGRES_URL")
if not URL and os.environ.get("NNTUNE_REQUIRE_POSTGRES"):
    raise RuntimeError("NNTUNE_REQUIRE_POSTGRES is set but no server is running (run tests through `make test`)")
pytestmark = pytest.mark.skipif(not URL, reason="no PostgreSQL server (run tests through `make test`)")


SECRET = "hunter2-not-stored"


def test_two_workers_share_a_postgres_study_then_tune_resumes_for_the_final_model(tmp_path):
    """Also: a password in the storage URL (the test server trusts every login, so it is accepted and ignored) is
    written to no file (result.json, config.yaml, model.json, the report, which reopens the study) and to no record in
    the study."""
    name = f"pg-{uuid.uuid4().hex[:8]}"
    url = URL.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@")
    common = ["--storage", url, "--study-name", name, "--trials", "6", "--trial-epochs", "5", "--quiet",
              "--set", "search.space={model.family: mlp}"]
    workers = [subprocess.Popen([sys.executable, "-m", "nntune", "worker", *common, "--out", str(tmp_path / f"w{i}")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err.decode()[-2000:]
    study = optuna.load_study(study_name=name, storage=URL.replace("postgresql://", "postgresql+psycopg://"))
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) >= 6
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2
    out = tmp_path / "final"
    subprocess.run([sys.executable, "-m", "nntune", "tune", *common, "--resume", "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL, timeout=300)
    result = json.loads((out / "result.json").read_text())
    assert result["study"]["storage"].startswith("postgresql") and result["trials"]["complete"] >= 1
    assert result["test"]["accuracy"] > 0.9
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".json", ".yaml", ".csv", ".html")]
    assert {"result.json", "config.yaml", "model.json", "report.html", "run.json"} <= {p.name for p in written}
    assert not [p for p in written if SECRET in p.read_text(errors="replace")]
    assert SECRET not in json.dumps([t.user_attrs for t in study.trials]) + json.dumps(study.user_attrs)


def test_unreachable_server_is_one_clear_line(capsys):
    from nntune.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["tune", "--storage", "postgresql://nobody@127.0.0.1:1/none", "--trials", "1", "--quiet",
              "--out", "/tmp/nntune-unreachable"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "cannot open the study storage" in err


def _fresh_database() -> str:
    """A new, empty database on the test server (so the workers also race to create Optuna's schema)."""
    import psycopg

    name = f"nntune_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return URL.rsplit("/", 1)[0] + "/" + name


def run_workers(n: int, storage: str, name: str, trials: int, out, extra=()) -> list[str]:
    """Start ``n`` workers at the same instant; return their stderr (they must all succeed)."""
    common = ["--storage", storage, "--study-name", name, "--trials", str(trials), "--trial-epochs", "2",
              "--quiet", "--set", "search.space={model.family: mlp}", *extra]
    workers = [subprocess.Popen([sys.executable, "-m", "nntune", "worker", *common, "--out", str(out / f"w{i}")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(n)]
    errors = []
    for w in workers:
        _, err = w.communicate(timeout=600)
        errors.append(err.decode())
        assert w.returncode == 0, err.decode()[-2000:]
    return errors


def check_counts(storage: str, name: str, trials: int, errors: list[str]) -> None:
    from nntune.storage import make_storage

    summaries = optuna.get_all_study_summaries(make_storage(storage))
    assert [s.study_name for s in summaries] == [name]
    study = optuna.load_study(study_name=name, storage=make_storage(storage))
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == trials, len(finished)  # exactly: a trial asked beyond the cap by racing workers fails
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)) and sorted(numbers) == list(range(len(numbers)))
    assert sum(1 for t in study.trials if t.user_attrs.get("default")) == 1  # enqueued once, not once per worker
    for err in errors:
        assert "IntegrityError" not in err and "already finished" not in err and "Traceback" not in err, err[-2000:]


def test_eight_workers_on_an_empty_postgres_database_reach_exactly_the_budget(tmp_path):
    storage, name = _fresh_database(), "eight"
    errors = run_workers(8, storage, name, 40, tmp_path)
    check_counts(storage, name, 40, errors)
    out = tmp_path / "final"
    subprocess.run([sys.executable, "-m", "nntune", "tune", "--storage", storage, "--study-name", name, "--trials",
                    "40", "--trial-epochs", "2", "--quiet", "--set", "search.space={model.family: mlp}",
                    "--resume", "--out", str(out)], check=True, stdout=subprocess.DEVNULL, timeout=300)
    result = json.loads((out / "result.json").read_text())
    assert result["trials"]["complete"] + result["trials"]["pruned"] >= 40 and result["test"]["accuracy"] > 0.8

