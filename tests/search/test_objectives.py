"""Hard limits on size and latency, and multi-objective searches with a Pareto front."""

import pytest
import torch

from nntune.config import RunConfig, apply_overrides, load_config
from nntune.errors import ConfigError
from nntune.search.constraints import latency_ms, violation
from nntune.search.study import tune
from nntune.training.pipeline import train

BASE = {"search.epochs": 2, "train.epochs": 2, "search.finalists": 0, "search.space": {"model.family": "mlp"}}


def _cfg(**over):
    return apply_overrides(RunConfig(), {**BASE, **over})


def _study(out):
    import optuna

    return optuna.load_study(study_name="nntune", storage=f"sqlite:///{out / 'study.db'}")


def test_no_complete_trial_exceeds_max_params(tmp_path):
    limit = 30_000
    result = tune(_cfg(**{"search.trials": 10, "search.max_params": limit, "search.population": 2}), tmp_path)
    trials = _study(tmp_path).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert complete and all(t.user_attrs["params"] <= limit for t in complete)
    infeasible = [t for t in trials if "infeasible" in t.user_attrs]
    assert infeasible, "the default space should propose some models above the limit"
    for t in infeasible:  # pruned before any training
        assert t.state.name == "PRUNED" and t.user_attrs["params"] > limit and "history" not in t.user_attrs
        assert "--max-params" in t.user_attrs["infeasible"]
    assert result["final"]["model"]["trainable"] <= limit


def test_latency_is_measured_at_batch_one_and_limits_are_checked():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    ms = latency_ms(model, (1, 8, 8), torch.device("cpu"), repeats=5)
    assert 0 < ms < 1000
    limits = RunConfig().search.model_copy(update={"max_params": 100, "max_latency_ms": 0.5})
    assert violation({"params": 50, "latency_ms": 0.1}, limits) is None
    assert "--max-params" in violation({"params": 500, "latency_ms": 0.1}, limits)
    assert "--max-latency-ms" in violation({"params": 50, "latency_ms": 2.0}, limits)


def test_a_two_objective_pareto_front_is_non_dominated_and_reproducible(tmp_path):
    cfg = _cfg(**{"search.trials": 8, "search.objectives": ["accuracy", "params"], "search.population": 1})
    result = tune(cfg, tmp_path)
    trials = [t for t in _study(tmp_path).trials if t.state.name == "COMPLETE"]
    front = result["pareto"]
    assert front and result["study"]["objectives"] == ["score", "params"]
    for p in front:  # no complete trial is at least as good in both and better in one
        acc, size = p["values"]["score"], p["values"]["params"]
        assert not any(t.values[0] >= acc and t.values[1] <= size and (t.values[0] > acc or t.values[1] < size)
                       for t in trials)
    assert result["best_trial"] == max(front, key=lambda p: p["values"]["score"])["trial"]
    for p in front[:2]:  # each point trains again from its saved config to the same score and size
        again = train(load_config(p["config"]))
        assert again["val"]["accuracy"] == pytest.approx(p["values"]["score"], abs=1e-6)
        assert again["model"]["trainable"] == p["values"]["params"]
    assert (tmp_path / "report.html").exists() is False  # the report is the CLI's job
    from nntune.reporting.report import build_report

    assert "Pareto front" in build_report(tmp_path).read_text()


def test_objectives_are_validated():
    with pytest.raises(ConfigError, match="first objective is the task's score"):
        apply_overrides(RunConfig(), {"search.objectives": ["params"]})
    with pytest.raises(ConfigError, match="unknown objective 'speed'"):
        apply_overrides(RunConfig(), {"search.objectives": "accuracy,speed"})
    assert apply_overrides(RunConfig(), {"search.objectives": "loss,latency"}).search.objectives == ["score",
                                                                                                       "latency"]


def test_resuming_with_other_objectives_or_a_single_objective_sampler_is_refused(tmp_path):
    tune(_cfg(**{"search.trials": 2, "search.objectives": ["accuracy", "params"], "search.population": 1}), tmp_path)
    with pytest.raises(ConfigError, match="optimizes score, params"):
        tune(_cfg(**{"search.trials": 3, "search.objectives": ["accuracy", "latency"]}), tmp_path, resume=True)
    with pytest.raises(ConfigError, match="--sampler cmaes handles one objective only"):
        tune(_cfg(**{"search.trials": 2, "search.objectives": ["accuracy", "params"], "search.sampler": "cmaes"}),
             tmp_path / "other")
