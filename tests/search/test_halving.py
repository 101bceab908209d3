"""Successive halving with continuation: rungs, the promotion rule, continuation exactness and the search."""

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import torch

from nntune.config import RunConfig, apply_overrides
from nntune.data.sources import Dataset
from nntune.errors import ConfigError
from nntune.search import halving
from nntune.search.study import tune
from nntune.training import resume
from nntune.training.callbacks import StopAtEpoch
from nntune.training.pipeline import fit_model, fit_population, prepare_data


def test_rungs_by_hand():
    # signals' 17 trial epochs: rungs 6, 18, 54 and the top rung 162 (the schedule's horizon)
    assert halving.first_rung(17) == 6 and halving.top_epochs(17) == 162
    assert halving.rungs(17, 162) == [6, 18, 54]
    # mnist5k's 12: 4, 12, 36 under 108; a given top cuts the ladder; tiny budgets keep a 2-epoch first rung
    assert halving.top_epochs(12) == 108 and halving.rungs(12, 108) == [4, 12, 36]
    assert halving.rungs(12, 30) == [4, 12] and halving.top_epochs(12, 30) == 30
    assert halving.first_rung(3) == 2 and halving.rungs(3, 2) == []


def test_promotion_keeps_the_best_n_over_eta():
    values = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]  # n=8, eta=3: the best 2 continue
    assert [halving.promoted(v, values, 3, True)[0] for v in values] == [True, True] + [False] * 6
    assert halving.promoted(0.7, values, 3, True) == (False, 3)
    # losses: smaller is better; a tie with the last kept value is kept
    assert halving.promoted(0.2, values, 3, False) == (True, 1)
    assert halving.promoted(0.8, [0.9, 0.8, 0.8, 0.1, 0.1, 0.1], 3, True) == (True, 2)
    # alone or with one other (n < eta): only the best continues
    assert halving.promoted(0.5, [0.5], 3, True) == (True, 1)
    assert halving.promoted(0.4, [0.5, 0.4], 3, True) == (False, 2)


def test_config_refuses_halving_with_several_objectives_and_max_epochs_without_it():
    with pytest.raises(ConfigError, match="halving compares one score"):
        apply_overrides(RunConfig(), {"search.pruner": "halving", "search.objectives": "accuracy,params"})
    with pytest.raises(ConfigError, match="max_epochs is the top rung"):
        apply_overrides(RunConfig(), {"search.max_epochs": 50})


def test_a_continued_member_matches_one_trained_straight_to_its_rung(float64, digits):
    """Three members under a cosine schedule on an 18-epoch horizon; at rung 2 the best one continues (the others
    stop and the population shrinks), at rung 6 it is stopped: its weights and history are those of the same config
    trained alone straight to epoch 6, and a halved member's are those of one trained alone to epoch 2."""
    data_set = Dataset(digits.name, digits.x[:400].double(), digits.y[:400], digits.task, digits.class_names)
    base = apply_overrides(RunConfig(), {"train.epochs": 18, "train.schedule.name": "cosine",
                                         "train.early_stopping.patience": 100})
    cfgs = [apply_overrides(base, {"train.lr": lr, "seed": i}) for i, lr in enumerate((3e-3, 1e-2, 3e-4))]
    data = prepare_data(cfgs[0], data_set)
    study = optuna.create_study(direction="maximize")
    board = halving.RungBoard(study)
    cuts = [halving.Halving(study.ask(), "val_accuracy", board, [2, 6]) for _ in cfgs]
    pop = fit_population(cfgs, data, [[cut, StopAtEpoch(6)] for cut in cuts])
    halved = [c.halved_at for c in cuts]
    assert sorted(halved, key=str) == [2, 2, None]
    kept = halved.index(None)
    assert len(pop[kept][1].history) == 6
    for m, (model, fit) in enumerate(pop):
        epochs = len(fit.history)
        alone, _, solo = fit_model(cfgs[m], data, [StopAtEpoch(epochs)])
        for k, v in alone.state_dict().items():
            assert torch.allclose(v.double(), model.state_dict()[k].double()), (m, k)
        assert [h["val_loss"] for h in fit.history] == pytest.approx([h["val_loss"] for h in solo.history], rel=1e-6)
        assert [h["lr"] for h in fit.history] == pytest.approx([h["lr"] for h in solo.history])
    # the rung values are each member's best so far, recorded on its trial
    for cut, (_, fit) in zip(cuts, pop):
        best2 = max(h["val_accuracy"] for h in fit.history[:2])
        assert cut.trial.user_attrs["rung_2"] == pytest.approx(best2)


def test_a_halving_search_continues_the_promising_and_prunes_the_rest(tmp_path):
    cfg = apply_overrides(RunConfig(), {"data.dataset": "wine", "search.trials": 12, "search.epochs": 6,
                                        "search.max_epochs": 18, "search.pruner": "halving",
                                        "search.population": 6, "search.finalists": 0, "search.defaults_first": True,
                                        "train.epochs": 4})
    result = tune(cfg, tmp_path)
    study = optuna.load_study(study_name="nntune", storage=f"sqlite:///{tmp_path / 'study.db'}")
    sampled = [t for t in study.trials if not t.user_attrs.get("default")]
    defaults = [t for t in study.trials if t.user_attrs.get("default")]
    assert all(t.user_attrs["config"]["train"]["epochs"] == 18 for t in sampled)  # the horizon: the top rung
    assert defaults and all(t.state.name == "COMPLETE" and "rung_2" not in t.user_attrs for t in defaults)
    halved = [t for t in sampled if "halved_at" in t.user_attrs]
    assert halved and all(t.state.name == "PRUNED" and t.user_attrs["halved_at"] in (2, 6) for t in halved)
    assert all(len(t.user_attrs["history"]) == t.user_attrs["halved_at"] for t in halved)
    assert all(t.intermediate_values for t in halved)  # the epochs are real Optuna reports
    # at every rung, the first population kept max(1, n // 3) of its n members
    first = [t for t in sampled if "rung_2" in t.user_attrs][:6]
    went_on = [t for t in first if t.user_attrs.get("halved_at") != 2]
    assert len(went_on) >= max(1, len(first) // 3)
    assert max(len(t.user_attrs["history"]) for t in sampled) > 6  # someone trained past the usual trial length
    assert result["trials"]["complete"] + result["trials"]["pruned"] == 12


def _trials(db):
    return optuna.load_study(study_name="nntune", storage=f"sqlite:///{db}").get_trials(deepcopy=False)


def test_a_killed_search_continues_a_promoted_trial_from_its_last_rung(tmp_path):
    """SIGKILL while a promoted trial trains past its rung; --resume fails it, and its retry continues from the
    state saved at the rung (its first epochs are the crashed trial's own), not from epoch 1."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "nntune", "tune", "--dataset", "digits", "--trials", "6", "--trial-epochs", "6",
            "--pruner", "halving", "--max-epochs", "120", "--population", "3", "--finalists", "0", "--out", str(out),
            "--quiet", "--set", "search.heartbeat=1", "--set", "search.defaults_first=false",
            "--set", "search.space={model.family: mlp, model.hidden_layers: 1, model.units: 16,"
            " train.early_stopping.patience: 50}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed = time.monotonic() + 120, None
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        states = list((out / "rungs").glob("*/state.json"))
        if states:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            killed = {int(p.parent.name): resume.load(p.parent) for p in states}
            break
    assert killed, "no trial was promoted before the search ended"
    time.sleep(2.5)  # the dead worker's heartbeats go stale (grace period 2 s)
    subprocess.run(args + ["--resume"], check=True, stdout=subprocess.DEVNULL, timeout=300)
    after = {t.number: t for t in _trials(out / "study.db")}
    for number, state in killed.items():
        assert after[number].state.name == "FAIL"
        retry = next(t for t in after.values() if t.user_attrs.get("continued_from", {}).get("trial") == number)
        assert retry.user_attrs["continued_from"]["epoch"] == state.epoch
        history = retry.user_attrs["history"]
        assert len(history) > state.epoch
        assert [h["val_loss"] for h in history[:state.epoch]] == [h["val_loss"] for h in state.history]
        assert all(retry.intermediate_values[h["epoch"]] == pytest.approx(h["val_accuracy"]) for h in state.history)
    assert not any((out / "rungs").glob("*/state.json"))  # every finished trial's states were removed
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in after.values()) == 6
