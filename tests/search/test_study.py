import csv
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from nntune import artifacts
from nntune.config import RunConfig, apply_overrides
from nntune.errors import ConfigError
from nntune.config import parse_duration
from nntune.search.study import tune
from nntune.search.budget import MAX_RESERVE


def test_parse_duration():
    assert [parse_duration(v) for v in ("90", "90s", "10m", "1.5h", None)] == [90, 90, 600, 5400, None]
    with pytest.raises(ConfigError, match="10 minutes"):
        parse_duration("10 minutes")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune")
    cfg = apply_overrides(RunConfig(), {"search.trials": 8, "search.ensemble": 3, "search.epochs": 12,
                                        "train.epochs": 20})
    return tune(cfg, out), out


def test_digits_eight_trials_reach_095(tuned):
    result, out = tuned
    assert result["test"]["accuracy"] >= 0.95
    assert result["trials"]["complete"] + result["trials"]["pruned"] == 8
    assert result["ensemble"]["k"] == 3 and result["ensemble"]["test"]["accuracy"] >= 0.9
    for key in ("best_params", "best_value", "val", "test", "trials", "seconds", "study"):
        assert key in result
    assert json.loads((out / "result.json").read_text())["best_trial"] == result["best_trial"]


def test_outputs_and_best_model_loads(tuned):
    result, out = tuned
    with (out / "trials.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 and {"number", "state", "value", "params.model.family"} <= set(rows[0])
    art = artifacts.load(out / "best")
    assert art.config.model.family == result["best_params"]["model.family"]
    assert (out / "study.db").exists() and (out / "best_config.yaml").exists()


def test_existing_study_needs_resume(tuned):
    _, out = tuned
    with pytest.raises(ConfigError, match="already has 8 trials .* --resume"):
        tune(apply_overrides(RunConfig(), {"search.trials": 9}), out)


def test_resume_runs_only_what_is_left(tuned, tmp_path):
    _, out = tuned
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    cfg = apply_overrides(RunConfig(), {"search.trials": 10, "search.final": "best_trial", "search.epochs": 12,
                                        "train.epochs": 20})
    result = tune(cfg, copy, resume=True)
    assert result["trials"]["complete"] + result["trials"]["pruned"] == 10
    assert result["final"]["mode"] == "best_trial"


def test_failed_trials_are_recorded_and_search_goes_on(tmp_path):
    # a huge LR makes most trials produce a non-finite loss; they fail with a reason and the search continues
    space = {"model.family": "mlp", "train.optimizer": "sgd", "train.lr": {"choice": [10.0, 1e-3]},
             "preprocess.scaler": "none", "train.schedule.name": "none", "model.batch_norm": False}
    cfg = apply_overrides(RunConfig(), {"search.trials": 3, "search.space": space, "search.epochs": 3,
                                        "search.sampler": "random", "train.momentum": 0.99, "train.epochs": 3})
    result = tune(cfg, tmp_path)
    study = optuna.load_study(study_name="nntune", storage=f"sqlite:///{tmp_path / 'study.db'}")
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert failed and all("non-finite" in t.user_attrs["fail_reason"] for t in failed)
    assert result["trials"]["fail"] == len(failed) and result["trials"]["complete"] >= 1


def test_pruner_prunes(tmp_path):
    cfg = apply_overrides(RunConfig(), {"search.trials": 10, "search.pruner": "asha", "search.epochs": 8,
                                        "train.epochs": 8,
                                        "search.sampler": "random", "search.space": {"model.family": "mlp"}})
    result = tune(cfg, tmp_path)
    assert result["trials"]["pruned"] >= 1


def _finished(db):
    study = optuna.load_study(study_name="nntune", storage=f"sqlite:///{db}")
    return study.get_trials(deepcopy=False)


def test_sigkill_mid_search_then_resume_keeps_every_finished_trial(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "nntune", "tune", "--trials", "9", "--trial-epochs", "10", "--epochs", "10",
            "--out", str(out),
            "--quiet", "--population", "3", "--set", "search.heartbeat=1", "--set", "search.space={model.family: mlp}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = out / "study.db"
    deadline = time.monotonic() + 120
    before = []
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if db.exists():
            try:
                trials = _finished(db)
            except Exception:
                continue
            complete = [t for t in trials if t.state.name == "COMPLETE"]
            if len(complete) >= 2 and sum(t.state.name == "RUNNING" for t in trials) == 3:  # mid-population
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                before = _finished(db)
                break
    assert before, "the search never reached two complete trials"
    running = [t.number for t in before if t.state.name == "RUNNING"]
    done = {t.number: t.value for t in before if t.state.name == "COMPLETE"}
    time.sleep(2.5)  # let the dead worker's heartbeat go stale (grace period 2 s)
    subprocess.run(args + ["--resume"], check=True, stdout=subprocess.DEVNULL, timeout=300)
    after = {t.number: t for t in _finished(db)}
    assert all(after[n].state.name == "COMPLETE" and after[n].value == v for n, v in done.items())
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in after.values()) >= 9
    for n in running:  # the crashed trial is failed and its configuration retried once
        assert after[n].state.name == "FAIL"
        retried = [t for t in after.values()
                   if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == n]
        assert len(retried) == 1
        failed, again = after[n], retried[0].params
        if "config" in failed.user_attrs:  # fully sampled before the kill: retried exactly as it was
            assert again == failed.params
        else:  # killed while its values were being sampled: it keeps those it had, the sampler adds the rest
            assert {k: again[k] for k in failed.params} == failed.params
    assert json.loads((out / "result.json").read_text())["test"]["accuracy"] > 0.9


def test_a_search_whose_every_trial_fails_stops_with_the_reason(tmp_path):
    from nntune.errors import NNTuneError

    cfg = apply_overrides(RunConfig(), {"search.trials": 2, "search.epochs": 2, "train.early_stopping.monitor":
                                        "val_f1", "search.space": {"model.family": "mlp"}})
    with pytest.raises(NNTuneError, match=r"every one of the last 2 trials failed .*val_f1"):
        tune(cfg, tmp_path)


def test_final_retrain_keeps_the_schedule_horizon_with_warmup(tmp_path):
    # warmup 3 with a best epoch that can be below it: the retrain must not shorten the schedule
    space = {"model.family": "mlp", "train.schedule.name": "cosine", "train.schedule.warmup_epochs": 3}
    cfg = apply_overrides(RunConfig(), {"search.trials": 2, "search.epochs": 6, "search.space": space,
                                        "train.early_stopping.patience": 0, "train.epochs": 6,
                                        "search.final": "retrain"})
    result = tune(cfg, tmp_path)
    assert result["final"]["config"]["train"]["epochs"] == 6
    assert len(result["final"]["history"]) == result["final"]["epochs"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_finishes_cleanly_with_the_trials_done(tmp_path, sig):
    """SIGINT mid-search (after two trials finished, with trials in flight) ends the search, fits the best trial found
    so far and exits 0 with ``interrupted`` in result.json; SIGTERM (docker stop, Slurm, timeout) does the same."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "nntune", "tune", "--trials", "1000", "--trial-epochs", "10",
                             "--epochs", "10",
                             "--out", str(out), "--quiet", "--set", "search.space={model.family: mlp}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the sqlite poll never waits on the search's own writes
        time.sleep(0.1)
        counts = _states(out / "study.db")
        if counts.get("COMPLETE", 0) >= 2 and counts.get("RUNNING", 0):
            break
    assert proc.poll() is None, "the search ended before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-1000:]
    result = json.loads((out / "result.json").read_text())
    assert result["interrupted"] and result["budget"]["stopped_by"] == "interrupted"
    assert result["trials"]["complete"] >= 2 and (out / "best").is_dir()


def _load(out):
    return optuna.load_study(study_name="nntune", storage=f"sqlite:///{out / 'study.db'}")


def test_defaults_come_first_and_are_not_enqueued_again_on_resume(tmp_path):
    from nntune.search.space import default_trials, resolve_space

    cfg = apply_overrides(RunConfig(), {"search.trials": 4, "search.epochs": 2, "search.finalists": 0,
                                        "train.epochs": 3})
    tune(cfg, tmp_path)
    trials = _load(tmp_path).trials
    expected = default_trials(resolve_space(cfg, "image", (1, 8, 8)), cfg, "image")  # digits: MLP, CNN, regularized
    assert len(expected) == 3 and [t.params for t in trials[:3]] == expected
    # defaults train as `nntune train` would (the config's epochs), the other trials for the trial epochs
    assert [t.user_attrs["config"]["train"]["epochs"] for t in trials] == [3, 3, 3, 2]
    assert [t.user_attrs.get("default") for t in trials] == [True, True, True, None]
    tune(apply_overrides(cfg, {"search.trials": 6}), tmp_path, resume=True)
    trials = _load(tmp_path).trials
    assert len(trials) == 6 and sum(bool(t.user_attrs.get("default")) for t in trials) == 3


def test_members_of_a_population_share_the_structure_and_are_separate_trials(tmp_path):
    from nntune.search.space import structure_values

    cfg = apply_overrides(RunConfig(), {"search.trials": 8, "search.epochs": 2, "search.population": 4,
                                        "search.defaults_first": False, "search.finalists": 0,
                                        "search.space": {"model.family": "mlp"}})
    result = tune(cfg, tmp_path)
    assert result["study"]["population_sizes"] == {"all": 4}
    populations: dict[int, list] = {}
    for t in _load(tmp_path).trials:
        assert "gain" not in t.user_attrs["population"]  # a size given, not measured: the estimates' bound applies
        populations.setdefault(t.user_attrs["population"]["first"], []).append(t)
    assert [len(p) for p in populations.values()] == [4, 4]
    for first, members in populations.items():
        assert len({json.dumps(structure_values(t.params), sort_keys=True) for t in members}) == 1
        assert len({t.params["train.lr"] for t in members}) == 4  # the sampler filled each member's own LR
        assert all(t.user_attrs.get("population_of") == first for t in members if t.number != first)
        assert all(t.state.name in ("COMPLETE", "PRUNED") for t in members)
        complete = [t for t in members if t.state.name == "COMPLETE"]
        assert all(t.value == t.user_attrs["val"]["accuracy"] for t in complete)
        assert all((tmp_path / "trials" / str(t.number)).is_dir() for t in complete)


def test_timeout_alone_has_no_trial_cap_and_ends_near_the_budget(tmp_path):
    # the default trial trains for train.epochs: 6 keeps it near the others, so two finalists fit in the third of
    # the budget kept back even on a loaded machine (with 60, its seed re-run alone can exceed that share)
    cfg = apply_overrides(RunConfig(), {"data.dataset": "wine", "search.timeout": 20, "search.epochs": 2,
                                        "train.epochs": 6})
    result = tune(cfg, tmp_path)
    finished = result["trials"]["complete"] + result["trials"]["pruned"]
    assert finished > 20 and result["budget"]["stopped_by"] == "timeout" and result["budget"]["trials"] is None
    # the search runs until what it keeps back (at most a third) is left; the finishing steps' estimate errs high,
    # and tune() alone leaves the report's tail unused, so the whole ends between 2/3 of the budget and the cap
    assert result["budget"]["search_seconds"] >= 20 * (1 - MAX_RESERVE) - 1.0
    assert result["budget"]["search_seconds"] <= result["seconds"] <= 30  # 20 s, with slack for a loaded machine
    # a timed search chooses; on a loaded machine the final retrain may give way to the finalists (and say so)
    assert result["finalists"]["chosen"] is not None, (result["finalists"], result["budget"])
    assert all(c.startswith("final retrain skipped") for c in result["budget"]["cut"]), result["budget"]["cut"]
    assert result["budget"]["fraction_used"] == pytest.approx(result["seconds"] / 20, abs=0.02)
    # each trial records its population's measured stacking gain, which the finishing steps' estimates use; a
    # population of more than one was chosen only for more than 15 % per member
    pops = [t.user_attrs["population"] for t in _load(tmp_path).trials if "population" in t.user_attrs]
    assert pops and all(p["gain"] >= 1.0 for p in pops)
    assert all(p["gain"] > 1.15 for p in pops if p["size"] > 1)


def test_finalists_are_rerun_over_seeds_and_the_best_mean_is_chosen(tmp_path):
    cfg = apply_overrides(RunConfig(), {"search.trials": 6, "search.epochs": 3, "search.finalists": 3,
                                        "train.epochs": 3,
                                        "search.finalist_seeds": 2, "search.space": {"model.family": "mlp"}})
    result = tune(cfg, tmp_path)
    fin = result["finalists"]
    assert len(fin["finalists"]) == 3 and all(len(r["scores"]) == 2 for r in fin["finalists"])
    best = max(fin["finalists"], key=lambda r: r["mean"])
    assert fin["chosen"] == best["trial"] == result["best_trial"]
    assert result["final"]["config"]["model"] == _load(tmp_path).trials[best["trial"]].user_attrs["config"]["model"]
    # search.final auto: the chosen config's two seeds were measured as an ensemble, and taken only if it validated
    # better than its seeds alone on average (then grown to search.final_seeds, 5); best/ is what the record says,
    # and its test metric is best/'s own
    record = result["final"]["ensemble"]
    chosen_at = record.get("chosen_at", record)
    assert record["trial"] == best["trial"] and chosen_at["size"] == 2
    assert (result["final"]["mode"] == "ensemble") == chosen_at["better"]
    if result["final"]["mode"] == "ensemble":
        assert record["size"] == len(record["members"]) == 5 and record["grown"] == "5 seeds: search.final_seeds"
    else:
        assert record["ensemble"] <= sum(record["members"]) / 2 and "grown" not in record
    from nntune.models.ensemble import Ensemble
    from nntune.training.pipeline import prepare_data

    art = artifacts.load(tmp_path / "best")
    assert isinstance(art.model, Ensemble) == (result["final"]["mode"] == "ensemble")
    data = prepare_data(cfg)
    accuracy = float((art.predict_proba(data.dataset.x[data.split.test]).argmax(1) == data.y_test.numpy()).mean())
    assert result["test"]["accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_final_ensemble_saves_the_seeds_as_one_model_that_exports(tmp_path):
    from nntune.export import export
    from nntune.models.ensemble import Ensemble

    cfg = apply_overrides(RunConfig(), {"search.trials": 3, "search.epochs": 2, "search.finalists": 2,
                                        "train.epochs": 2, "search.finalist_seeds": 3, "search.final": "ensemble",
                                        "search.final_seeds": 4, "search.final_pool": False,
                                        "search.space": {"model.family": "mlp"}})
    result = tune(cfg, tmp_path)
    record = result["final"]["ensemble"]
    # the finalists' three seeds, then one more: search.final_seeds; the other finalist's models do not join
    assert "pool" not in record
    assert result["final"]["mode"] == "ensemble" and record["size"] == 4 and record["chosen_at"]["size"] == 3
    art = artifacts.load(tmp_path / "best")
    assert isinstance(art.model, Ensemble) and len(art.model.members) == 4
    from nntune.reporting.report import build_report

    page = build_report(tmp_path).read_text()
    assert "ensemble of the chosen configuration's 4 seeds" in page
    assert "with the finalists' 3 seeds" in page and "to 4 seeds: search.final_seeds" in page
    done = export(tmp_path / "best", "torchscript")
    assert done["max_abs_diff"] < 1e-5


def test_the_other_finalists_models_join_the_seed_ensemble_when_they_lower_the_validation_loss(tmp_path):
    from types import SimpleNamespace

    from nntune.export import export
    from nntune.reporting.report import build_report
    from nntune.search.final import _pool_members
    from nntune.training.pipeline import prepare_data

    cfg = apply_overrides(RunConfig(), {"search.trials": 4, "search.epochs": 2, "search.finalists": 3,
                                        "train.epochs": 2, "search.finalist_seeds": 2, "search.final": "ensemble",
                                        "search.final_seeds": 3,
                                        "search.space": {"model.family": "mlp", "preprocess.scaler": "channel"}})
    result = tune(cfg, tmp_path)
    record, fin = result["final"]["ensemble"], result["finalists"]
    others = [r["trial"] for r in fin["finalists"] if r["trial"] != fin["chosen"]]
    pool = record["pool"]  # two other finalists, each with its trial's weights and one seed run
    assert record["size"] == 3 and pool["trials"] == others and pool["size"] == 3 + 2 * 2
    assert pool["taken"] == (pool["loss"] < pool["seeds_loss"])
    art = artifacts.load(tmp_path / "best")
    assert len(art.model.members) == (pool["size"] if pool["taken"] else 3)
    data = prepare_data(cfg)
    accuracy = float((art.predict_proba(data.dataset.x[data.split.test]).argmax(1) == data.y_test.numpy()).mean())
    assert result["test"]["accuracy"] == pytest.approx(accuracy, abs=1e-6)  # the test metric is best/'s own
    page = build_report(tmp_path).read_text()
    assert f"Pooled with the other finalists' models (trials {', '.join(map(str, others))}" in page
    assert export(tmp_path / "best", "torchscript")["max_abs_diff"] < 1e-5
    # a finalist whose inputs are scaled otherwise cannot join: its models see other numbers
    study = _load(tmp_path)
    trials = [(study.trials[n], []) for n in others]
    here = SimpleNamespace(out=tmp_path)
    assert len(_pool_members(here, cfg, trials, data)) == 2
    assert _pool_members(here, apply_overrides(cfg, {"preprocess.scaler": "robust"}), trials, data) == []


def test_grid_search_runs_populations_and_stops_when_the_grid_is_exhausted(tmp_path):
    from nntune.search.space import default_space

    base = RunConfig()
    flat = {f"{sec}.{k}": v for sec in ("model", "train", "preprocess") for k, v in getattr(base, sec)}
    flat.update({f"train.schedule.{k}": v for k, v in base.train.schedule})
    flat.update({f"train.early_stopping.{k}": v for k, v in base.train.early_stopping})
    space = {k: flat[k] for k in default_space("tabular", (13,))}
    space.update({"model.activation": ["relu", "tanh"], "train.lr": [1e-3, 1e-2], "preprocess.scaler": "zscore"})
    cfg = apply_overrides(RunConfig(), {"data.dataset": "wine", "search.sampler": "grid", "search.population": 2,
                                        "search.trials": 10, "search.epochs": 2, "search.space": space})
    result = tune(cfg, tmp_path)
    trials = _load(tmp_path).trials
    assert result["budget"]["stopped_by"] == "grid" and len(trials) == 4  # every point once, none again
    assert sorted((t.params["model.activation"], t.params["train.lr"]) for t in trials) == [
        ("relu", 1e-3), ("relu", 1e-2), ("tanh", 1e-3), ("tanh", 1e-2)]
    populations: dict[int, set] = {}
    for t in trials:  # points asked together train together when their structure (activation) is the same
        populations.setdefault(t.user_attrs["population"]["first"], set()).add(t.params["model.activation"])
    assert all(len(acts) == 1 for acts in populations.values())


def test_four_workers_on_one_sqlite_file_reach_exactly_the_budget(tmp_path):
    """SQLite serializes writers; with its busy timeout the four workers wait for each other instead of failing."""
    from tests.search.test_postgres import check_counts, run_workers

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    errors = run_workers(4, storage, "four", 24, tmp_path)
    check_counts(storage, "four", 24, errors)


def _run_cli(args: list[str]) -> None:
    """A forked child running one nntune command (the test's imports are shared, so it starts at once). It trains
    on one thread: a forked child that enters the OpenMP thread pool its parent already used hangs."""
    import contextlib
    import io

    import torch

    from nntune.cli import main

    torch.set_num_threads(1)

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(args)
        except SystemExit:
            pass


def _states(db) -> dict[str, int]:
    """Trial counts by state, read straight from the SQLite file (cheap enough to poll)."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:  # never creates the file
            return dict(conn.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
    except sqlite3.Error:  # not created yet
        return {}


def test_twenty_sigkills_of_workers_and_tune_lose_nothing(tmp_path):
    """Kill `tune` and `worker` processes of one study 20 times, each time mid-search (after the search made
    progress, at a seeded random moment); every finished trial survives, every trial that was running is failed by
    its stale heartbeat and retried at most once, and a last `tune --resume` reaches exactly the trial budget and
    saves a model that loads."""
    import multiprocessing
    import random

    out, budget = tmp_path / "run", 90
    db = out / "study.db"
    # forked children cannot use a CUDA context the test process may already hold: they train on the CPU
    common = ["--device", "cpu", "--trials", str(budget), "--trial-epochs", "3", "--epochs", "3", "--population", "3",
              "--finalists",
              "0", "--quiet", "--set", "search.heartbeat=1", "--set", "search.space={model.family: mlp}"]
    tune_args = ["tune", *common, "--out", str(out), "--resume"]
    worker_args = ["worker", *common, "--storage", f"sqlite:///{db}", "--out", str(tmp_path / "worker")]
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(0)
    finished: dict[int, float | None] = {}
    for kill in range(20):
        proc = ctx.Process(target=_run_cli, args=(tune_args if kill % 2 == 0 else worker_args,))
        proc.start()
        target, deadline = len(finished) + 1, time.monotonic() + 120
        while time.monotonic() < deadline:  # wait for progress, with trials in flight
            time.sleep(0.05)
            counts = _states(db)
            if counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) >= target and counts.get("RUNNING", 0):
                break
        time.sleep(rng.uniform(0.0, 0.3))
        assert proc.is_alive(), f"the search ended before kill {kill + 1}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        now = {t.number: t for t in _finished(db)}
        for n, value in finished.items():  # nothing finished is ever lost or changed
            assert now[n].state.name in ("COMPLETE", "PRUNED") and now[n].value == value
        finished.update({n: t.value for n, t in now.items() if t.state.name in ("COMPLETE", "PRUNED")})
    assert len(finished) < budget
    time.sleep(2.5)  # the last killed process's heartbeats go stale (grace period 2 s)
    _run_cli(tune_args)
    trials = {t.number: t for t in _finished(db)}
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials.values()) == budget
    assert not [t for t in trials.values() if t.state.name in ("RUNNING", "WAITING")]
    retries: dict[int, int] = {}
    for t in trials.values():
        origin = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t)
        if origin is not None:
            retries[origin] = retries.get(origin, 0) + 1
            assert trials[origin].state.name == "FAIL"
    assert retries and max(retries.values()) == 1  # crashed trials were retried, each at most once
    assert artifacts.load(out / "best").config.model.family == "mlp"


@pytest.fixture(params=["UTC", "Asia/Tokyo", "America/Los_Angeles"])
def local_time_zone(request, monkeypatch):
    """This process's local time zone (Optuna stores trial times in UTC; a worker's clock may be anywhere)."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_trial_killed_before_its_first_heartbeat_is_failed_and_retried(tmp_path, local_time_zone):
    """A process killed between `ask` and its first heartbeat leaves a RUNNING trial with no heartbeat, which
    Optuna never fails; nntune fails it after the grace period and retries it, so it cannot hold a trial slot. In
    every time zone: east of UTC it was failed at once, west of UTC never."""
    from nntune.storage import fail_stale_trials, make_storage

    storage = make_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=1)
    study = optuna.create_study(storage=storage, study_name="z")
    zombie = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # no heartbeat recorded
    fail_stale_trials(study)
    assert study.trials[0].state.name == "RUNNING"  # within the grace period (2 s): it may still be alive
    time.sleep(2.2)
    fail_stale_trials(study)
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "WAITING"] and study.trials[1].params == {"x": zombie.params["x"]}


def test_a_warm_started_study_begins_with_the_earlier_best(tmp_path):
    from nntune.search.warm_start import warm_trials

    first = apply_overrides(RunConfig(), {"search.trials": 6, "search.epochs": 2, "search.finalists": 0,
                                          "train.epochs": 2, "search.population": 2,
                                          "search.space": {"model.family": "mlp"}})
    tune(first, tmp_path / "a")
    earlier = _load(tmp_path / "a")
    best = sorted((t for t in earlier.trials if t.state.name == "COMPLETE"), key=lambda t: -t.value)[:3]
    second = apply_overrides(first, {"search.trials": 4, "search.warm_start": str(tmp_path / "a"),
                                     "search.warm_start_top": 3})
    tune(second, tmp_path / "b")
    trials = _load(tmp_path / "b").trials
    for new, old in zip(trials[:3], best):
        assert new.user_attrs["warm_start"]["trial"] == old.number and new.params == old.params
    # nntune's default follows, unless it is one of the earlier best already (the same values are not enqueued twice)
    assert any(t.user_attrs.get("default") for t in trials) or any(t.user_attrs.get("default") for t in best)
    # a value the new space cannot propose is left to the sampler; a trial with no fitting value is skipped
    from nntune.search.space import Param

    only_lr = [Param("train.lr", "float", low=best[0].params["train.lr"] * 2, high=1.0, log=True),
               Param("model.activation", "choice", choices=(best[0].params["model.activation"],))]
    assert warm_trials(earlier, only_lr, 1) == [{"values": {"model.activation": best[0].params["model.activation"]},
                                                 "number": best[0].number, "value": best[0].value}]
    assert warm_trials(earlier, [], 3) == []


def test_warm_start_sources_are_checked(tmp_path):
    from nntune.errors import ConfigError
    from nntune.search.warm_start import source_study

    with pytest.raises(ConfigError, match="not a tune run directory"):
        source_study(str(tmp_path))
    with pytest.raises(ConfigError, match="no study named 'other'"):
        source_study(f"sqlite:///{tmp_path / 'x.db'}#other")


def test_final_best_trial_retrains_when_another_worker_holds_the_weights(tmp_path):
    """--final best_trial where the chosen trial ran in a worker with another run directory (another machine, no
    shared filesystem): the configuration is retrained and budget.cut says why, instead of failing at the end."""
    from nntune.search.worker import run_worker

    cfg = apply_overrides(RunConfig(), {"data.dataset": "wine", "search.trials": 3, "search.epochs": 3,
                                        "search.finalists": 0, "search.final": "best_trial",
                                        "search.storage": f"sqlite:///{tmp_path / 'shared.db'}",
                                        "search.space": {"model.family": "mlp"}})
    run_worker(cfg, tmp_path / "worker")
    result = tune(cfg, tmp_path / "run", resume=True)
    assert not (tmp_path / "run" / "trials").exists()  # every trial ran in the worker
    assert result["final"]["mode"] == "retrain" and (tmp_path / "run" / "best").is_dir()
    assert any(f"trial {result['best_trial']}'s weights are with the worker" in c for c in result["budget"]["cut"])
