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


def test_two_workers_share_a_postgres_study_then_tune_resumes_for_the_final_model(tmp_path):
    name = f"pg-{uuid.uuid4().hex[:8]}"
    common = ["--storage", URL, "--study-name", name, "--trials", "6", "--trial-epochs", "5", "--quiet",
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


def test_unreachable_server_is_one_clear_line(capsys):
    from nntune.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["tune", "--storage", "postgresql://nobody@127.0.0.1:1/none", "--trials", "1", "--quiet",
              "--out", "/tmp/nntune-unreachable"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "cannot open the study storage" in err
