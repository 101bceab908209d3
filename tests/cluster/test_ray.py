"""A search's workers on a Ray cluster: a local one on 127.0.0.1 with 2 CPUs, started here, and the PostgreSQL server
of scripts/with_postgres.sh (as in `make test`). The placement rules and the published end are unit-tested too."""

import importlib.util
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import pytest

from nntune.cluster import ray as nray
from nntune.config import RunConfig, apply_overrides
from nntune.errors import ConfigError, NNTuneError
from nntune.search.budget import Budget

URL = os.environ.get("NNTUNE_TEST_POSTGRES_URL")
HAVE_RAY = importlib.util.find_spec("ray") is not None  # Ray itself runs in the subprocesses only
if not HAVE_RAY and os.environ.get("NNTUNE_REQUIRE_RAY"):
    raise RuntimeError("NNTUNE_REQUIRE_RAY is set but Ray is not installed (make installs nntune[ray])")
needs_cluster = pytest.mark.skipif(not (HAVE_RAY and URL), reason="needs Ray and the PostgreSQL test server")
# a cluster on the loopback address only, without token authentication (nothing outside this machine reaches it)
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_USAGE_STATS_ENABLED": "0"}
SPACE = ["--set", "search.space={model.family: mlp}"]


@pytest.fixture(scope="module")
def cluster():
    """A Ray head on 127.0.0.1 with 2 CPUs in a temporary directory; its address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="/tmp/nr")  # Ray's socket paths must stay short
    ray_bin = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                    "--disable-usage-stats", "--object-store-memory=100000000", f"--temp-dir={temp}"],
                   env=RAY_ENV, check=True, capture_output=True, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=RAY_ENV, capture_output=True, timeout=120, check=False)
        shutil.rmtree(temp, ignore_errors=True)


def _tune(address: str, out: Path, name: str, trials: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nntune", "tune", "--ray", address, "--workers", "3",
                             "--cpus-per-worker", "0.5", "--storage", URL, "--study-name", name, "--trials",
                             str(trials), "--quiet", "--finalists", "0", "--out", str(out), "--json",
                             str(out) + ".json", *SPACE, *extra], env=RAY_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _study(name: str) -> optuna.Study:
    from nntune.storage import make_storage

    return optuna.load_study(study_name=name, storage=make_storage(URL))


def _finished(study: optuna.Study) -> dict[int, float]:
    return {t.number: t.value for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")}


@needs_cluster
def test_three_ray_workers_reach_exactly_the_trial_budget_on_postgres(cluster, tmp_path):
    name = f"ray-{uuid.uuid4().hex[:8]}"
    run = _tune(cluster, tmp_path / "run", name, 9, "--trial-epochs", "2")
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err.decode()[-3000:]
    result = json.loads((tmp_path / "run.json").read_text())
    study = _study(name)
    assert len(_finished(study)) == 9 and result["trials"]["complete"] + result["trials"]["pruned"] == 9
    info = result["cluster"]
    assert info["engine"] == "ray" and info["workers"] == 3 and info["lost"] == 0 and len(info["ran"]) == 3
    assert {r["stopped_by"] for r in info["ran"]} == {"trials"} and result["budget"]["stopped_by"] == "trials"
    # the trials ran in the Ray workers' processes, not in the launcher, and the launcher fitted the final model
    assert {t.user_attrs["worker"].split(":")[1] for t in study.trials if "worker" in t.user_attrs} <= \
        {str(r["pid"]) for r in info["ran"]}
    assert result["test"]["accuracy"] > 0.8 and (tmp_path / "run" / "best").is_dir()


@needs_cluster
def test_a_killed_ray_worker_loses_no_finished_trial_and_the_study_ends_at_the_budget(cluster, tmp_path):
    name = f"ray-kill-{uuid.uuid4().hex[:8]}"
    # trials of many epochs, so that one is running when its worker is killed; heartbeats every second
    run = _tune(cluster, tmp_path / "run", name, 10, "--trial-epochs", "40", "--population", "1",
                "--pruner", "none", "--set", "search.heartbeat=1")
    victim, before, deadline = None, {}, time.monotonic() + 180
    while victim is None and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.3)
        try:
            study = _study(name)
        except KeyError:  # not created yet
            continue
        before = _finished(study)
        running = [t for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING" and "worker" in
                   t.user_attrs]
        if len(before) >= 2 and running:
            victim = running[-1]  # the newest: the furthest from finishing
            os.kill(int(victim.user_attrs["worker"].split(":")[1]), signal.SIGKILL)
    assert victim is not None, "no trial was running with two finished"
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err.decode()[-3000:]
    study = _study(name)
    after = _finished(study)
    assert len(after) == 10  # the budget, reached by the workers left, the one Ray started again, another round
    assert all(after[n] == v for n, v in before.items())  # every trial finished before the kill is kept as it was
    killed = study.trials[victim.number]
    assert killed.state.name == "FAIL"
    assert any(t.system_attrs.get("failed_trial") == victim.number for t in study.trials)  # retried once
    result = json.loads((tmp_path / "run.json").read_text())
    assert result["cluster"]["lost"] == 0 and len(result["cluster"]["ran"]) >= 3  # Ray started the dead one again


@pytest.mark.skipif(not HAVE_RAY, reason="needs Ray")
def test_ray_local_runs_workers_on_this_machine_with_the_sqlite_study(tmp_path):
    """``--ray local`` starts its own Ray instance (ended with the search); the run directory's SQLite file is the
    study, which every worker on this one machine shares."""
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "nntune", "tune", "--ray", "local", "--workers", "2", "--trials", "6",
                          "--trial-epochs", "2", "--finalists", "0", "--quiet", "--out", str(out), "--json",
                          str(out) + ".json", *SPACE], env=RAY_ENV, capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    result = json.loads((tmp_path / "run.json").read_text())
    assert result["study"]["storage"].startswith("sqlite") and result["trials"]["complete"] == 6
    assert result["cluster"]["address"] == "local" and len(result["cluster"]["ran"]) == 2


def test_ray_missing_is_one_line_naming_the_extra(monkeypatch, capsys, tmp_path):
    from nntune.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as where the extra is not installed
    with pytest.raises(SystemExit) as exc:
        main(["tune", "--ray", "auto", "--trials", "1", "--quiet", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "pip install 'nntune[ray]'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # said before any work


def test_ray_placement_settings_need_ray():
    with pytest.raises(ConfigError, match="set ray too"):
        apply_overrides(RunConfig(), {"search.workers": 4})
    cfg = apply_overrides(RunConfig(), {"search.ray": "auto", "search.workers": 4, "search.gpus_per_worker": 0.5})
    assert cfg.search.workers == 4 and cfg.search.gpus_per_worker == 0.5


def _node(host: str, cpu: float, gpu: float = 0) -> dict:
    return {"NodeManagerHostname": host, "Alive": True, "Resources": {"CPU": cpu, **({"GPU": gpu} if gpu else {})}}


def test_capacity_counts_what_each_node_holds():
    nodes = [_node("a", 16, 2), _node("b", 8, 1), _node("c", 4)]
    assert nray.capacity(nodes, 1, 0) == 28
    assert nray.capacity(nodes, 2, 0) == 14
    assert nray.capacity(nodes, 1, 0.5) == 6  # two per card: 4 on a, 2 on b, none on the CPU node
    assert nray.capacity(nodes, 4, 1) == 3
    assert nray.capacity([_node("a", 1)], 2, 0) == 1  # at least one (check_fits refuses it first)


def test_resources_no_node_has_are_refused_by_name():
    nray.check_fits([_node("a", 8, 1)], 4, 1)
    with pytest.raises(NNTuneError, match=r"--gpus-per-worker 1: .*largest: 16 CPUs, 0 GPUs"):
        nray.check_fits([_node("a", 16), _node("b", 8)], 1, 1)


def test_a_sqlite_study_refuses_nodes_on_other_hosts():
    nray.check_sqlite_host("/r/study.db", {"here"}, here="here")
    with pytest.raises(NNTuneError, match=r"SQLite file on this machine \(/r/study.db\).*\(gpu1, gpu2\).*"
                                          r"--storage postgresql://"):
        nray.check_sqlite_host("/r/study.db", {"here", "gpu1", "gpu2"}, here="here")
    assert nray._sqlite_path(None, Path("/r")) == "/r/study.db"
    assert nray._sqlite_path("sqlite:////data/s.db", Path("/r")) == "/data/s.db"
    assert nray._sqlite_path("postgresql://u@h/db", Path("/r")) is None


def test_workers_end_when_the_launcher_publishes():
    """The launcher keeps back the finishing steps' estimate (once a trial has completed: before, the initial reserve
    stays) and publishes the end; a worker's budget reads it."""
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    launcher = Budget.from_config(RunConfig().search.model_copy(update={"timeout": 100.0}))
    end = nray.PublishedEnd(study)
    end.publish(launcher, lambda s: 20.0)
    assert launcher.reserve == pytest.approx(100 / 3)  # no trial measured yet: the most is kept back
    study.add_trial(optuna.trial.create_trial(value=0.9))
    end.publish(launcher, lambda s: 20.0)
    published = study.user_attrs[nray.ENDS_KEY]
    assert published == pytest.approx(time.time() + launcher.search_left(), abs=0.5)
    assert launcher.reserve == pytest.approx(20.0 + launcher.tail)
    worker = Budget(5, None, ends=nray.PublishedEnd(study))
    assert worker.search_left() == pytest.approx(published - time.time(), abs=0.5)
    end.publish(launcher, lambda s: 20.4)  # moved by less than a second: not written again
    assert study.user_attrs[nray.ENDS_KEY] == published
    end.publish(launcher, lambda s: 10.0)
    assert study.user_attrs[nray.ENDS_KEY] == pytest.approx(published + 10.0, abs=0.5)
    # a later run of the study without --timeout has no end, whatever the earlier run left
    nray.PublishedEnd(study).publish(Budget(10, None), None)
    assert nray.PublishedEnd(study)() == math.inf


def test_what_ended_a_ray_search_and_when_it_failed():
    rounds = nray.Rounds()
    rounds.ran = [{"stopped_by": "trials"}, {"stopped_by": "interrupted"}]  # one stopped by the launcher at the end
    assert rounds.stopped_by(True) == "trials" and rounds.stopped_by(False) == "interrupted"
    rounds.ran = [{"stopped_by": "interrupted"}]
    assert rounds.stopped_by(True) == "timeout"
    rounds.check()  # a worker ran to its end: errors of others are reported, not raised
    failed = nray.Rounds()
    failed.first_error, failed.errors = NNTuneError("--data x.csv: no such file"), ["NNTuneError: ..."]
    with pytest.raises(NNTuneError, match="every Ray worker failed; the first: --data x.csv"):
        failed.check()
    lost = nray.Rounds()
    lost.lost = 2
    with pytest.raises(NNTuneError, match=r"every Ray worker died \(2, each started 4 times\).*--resume"):
        lost.check()
