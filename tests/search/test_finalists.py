from types import SimpleNamespace

import optuna
import pytest

from nntune.config import RunConfig, apply_overrides
from nntune.search import finalists
from nntune.search.budget import Budget
from nntune.training.epoch import FitResult


def _study(values: dict[float, str], attrs: dict[str, dict] | None = None):
    """A study with one complete trial per (value, activation), each with a config, a population record and
    ``attrs[activation]``."""
    study = optuna.create_study(direction="maximize")
    for value, act in values.items():
        cfg = apply_overrides(RunConfig(), {"model.activation": act})
        study.enqueue_trial({"model.activation": act})
        t = study.ask()
        t.suggest_categorical("model.activation", ["relu", "gelu", "tanh"])
        t.set_user_attr("config", cfg.to_dict())
        t.set_user_attr("population", {"first": t.number, "size": 1, "seconds": 1.0})
        for key, v in (attrs or {}).get(act, {}).items():
            t.set_user_attr(key, v)
        study.tell(t, value)
    return study


def _search(seeds=3, size=4):
    cfg = apply_overrides(RunConfig(), {"search.finalists": 3, "search.finalist_seeds": seeds})
    return SimpleNamespace(cfg=cfg, monitor="val_accuracy", population_size=lambda c, seconds=None: size,
                           stacking_gain=lambda c: None,
                           data_for=lambda c: None)


def _fits(scores_by_activation):
    def fake_fit_configs(cfgs, data_for, size, callbacks=None):
        out = []
        for c in cfgs:
            fit = FitResult(history=[{"epoch": 1, "val_accuracy": scores_by_activation[c.model.activation][c.seed]}],
                            best_epoch=1)
            out.append((None, fit))
        return out
    return fake_fit_configs


def test_a_lucky_seed_loses_to_the_best_mean(monkeypatch):
    # relu's trial scored 0.99 by luck (its other seeds: 0.80, 0.82); gelu is steady around 0.95
    study = _study({0.99: "relu", 0.95: "gelu", 0.90: "tanh"})
    scores = {"relu": {1000: 0.80, 2000: 0.82}, "gelu": {1000: 0.94, 2000: 0.96}, "tanh": {1000: 0.9, 2000: 0.9}}
    monkeypatch.setattr(finalists, "fit_configs", _fits(scores))
    out, _ = finalists.run_finalists(_search(), study, Budget(None, None))
    rows = {r["trial"]: r for r in out["finalists"]}
    assert out["chosen"] == 1 and study.best_trial.number == 0
    assert rows[0]["scores"] == [0.99, 0.80, 0.82] and rows[0]["seeds"] == [0, 1000, 2000]
    assert rows[1]["mean"] == pytest.approx(0.95) and rows[1]["std"] == pytest.approx(0.01)
    assert out["by"] == "mean val accuracy over 3 seeds"


def _tied_study(losses: dict[str, float | None]):
    """Three complete trials with the same validation accuracy (0.99) and these validation losses by activation."""
    study = optuna.create_study(direction="maximize")
    for act, loss in losses.items():
        study.enqueue_trial({"model.activation": act})
        t = study.ask()
        t.suggest_categorical("model.activation", ["relu", "gelu", "tanh"])
        t.set_user_attr("config", apply_overrides(RunConfig(), {"model.activation": act}).to_dict())
        t.set_user_attr("population", {"first": t.number, "size": 1, "seconds": 1.0})
        if loss is not None:
            t.set_user_attr("val", {"accuracy": 0.99, "loss": loss})
        study.tell(t, 0.99)
    return study


def test_equal_validation_scores_are_decided_by_the_validation_loss():
    from nntune.search.objectives import best_trial, pareto

    # trial 0 has no recorded loss (a trial from before), trial 1 the lowest: the trial number decides nothing
    study = _tied_study({"relu": None, "gelu": 0.30, "tanh": 0.10})
    assert study.best_trial.number == 0  # Optuna's own choice among equals: the first
    assert best_trial(study).number == 2 and pareto(study)[0].number == 2
    assert [t.number for t in finalists.top_trials(study, 3)] == [2, 1, 0]
    # a better score still wins over a lower loss
    study.enqueue_trial({"model.activation": "relu"})
    t = study.ask()
    t.set_user_attr("val", {"accuracy": 0.995, "loss": 0.9})
    study.tell(t, 0.995)
    assert best_trial(study).number == 3


def test_finalists_with_equal_mean_scores_are_decided_by_their_mean_validation_loss(monkeypatch):
    study = _tied_study({"relu": 0.20, "gelu": 0.25})  # relu's trial ranks first
    losses = {"relu": {1000: 0.40}, "gelu": {1000: 0.15}}  # gelu's seeds: mean loss 0.20 against relu's 0.30

    def fake_fit_configs(cfgs, data_for, size, callbacks=None):
        return [(None, FitResult(history=[{"epoch": 1, "val_accuracy": 0.99, "val_loss":
                                           losses[c.model.activation][c.seed]}], best_epoch=1)) for c in cfgs]

    monkeypatch.setattr(finalists, "fit_configs", fake_fit_configs)
    out, _ = finalists.run_finalists(_search(seeds=2), study, Budget(None, None))
    rows = {r["trial"]: r for r in out["finalists"]}
    assert rows[0]["mean"] == rows[1]["mean"] == pytest.approx(0.99)
    assert rows[0]["val_loss_mean"] == pytest.approx(0.30) and rows[1]["val_loss_mean"] == pytest.approx(0.20)
    assert out["chosen"] == 1


def test_a_seed_that_diverges_disqualifies_its_config(monkeypatch):
    study = _study({0.99: "relu", 0.95: "gelu"})
    scores = {"relu": {1000: 0.98, 2000: float("nan")}, "gelu": {1000: 0.9, 2000: 0.9}}
    monkeypatch.setattr(finalists, "fit_configs", _fits(scores))
    out, _ = finalists.run_finalists(_search(), study, Budget(None, None))
    assert out["chosen"] == 1 and out["finalists"][0]["mean"] is None


def test_finalists_that_do_not_fit_the_time_left_are_dropped(monkeypatch):
    study = _study({0.99: "relu", 0.95: "gelu", 0.90: "tanh"})
    monkeypatch.setattr(finalists, "fit_configs", _fits({a: {1000: 0.9, 2000: 0.9} for a in ("relu", "gelu",
                                                                                           "tanh")}))
    budget = Budget(None, 3.9)  # each finalist's seeds cost ~1 s, the final fit ~1.25 s, the tail 0.59 s: two fit
    out, _ = finalists.run_finalists(_search(), study, budget)
    assert [r["trial"] for r in out["finalists"]] == [0, 1]
    short = Budget(None, 2.0)
    out, _ = finalists.run_finalists(_search(), study, short)  # not even two
    assert out["chosen"] is None
    assert out["skipped"].startswith("fewer than two finalists fit the time left: trials 0 and 1 need about 2.0 s "
                                     "for one more seed each, 1.")  # 2 s - 0.3 s tail - the time the test took
    assert short.cut == [f"finalists skipped: {out['skipped']}"]


def test_when_two_finalists_do_not_fit_on_every_seed_they_run_on_fewer(monkeypatch):
    # members that do not stack (population size 1): each extra seed costs the trial's 1 s
    study = _study({0.99: "relu", 0.95: "gelu", 0.90: "tanh"})
    monkeypatch.setattr(finalists, "fit_configs", _fits({a: {1000: 0.9, 2000: 0.9} for a in ("relu", "gelu",
                                                                                           "tanh")}))
    search = _search(seeds=3, size=1)
    assert finalists.plan(search, finalists.top_trials(study, 3), 6.0)[1:] == (6.0, 3)  # 3 finalists x 2 s
    assert finalists.plan(search, finalists.top_trials(study, 3), 2.5)[1:] == (2.0, 2)  # 2 x 1 s, not 1 x 2 s
    assert finalists.plan(search, finalists.top_trials(study, 3), 1.5)[0] == []
    out, _ = finalists.run_finalists(search, study, Budget(None, 4.9))  # 4.9 - 0.74 tail - 1.25 final = 2.9 s left
    assert [(r["trial"], r["seeds"]) for r in out["finalists"]] == [(0, [0, 1000]), (1, [0, 1000])]
    assert out["by"] == "mean val accuracy over 2 seeds" and out["chosen"] is not None


def test_the_finishing_estimate_keeps_a_margin_over_the_plan():
    study = _study({0.99: "relu", 0.95: "gelu", 0.90: "tanh"})
    search = _search(seeds=3, size=1)
    budget = Budget(None, 600.0)  # room for everything: 1.25 s final fit + 3 finalists x 2 s
    assert finalists.finishing_cost(search, study, budget) == pytest.approx(7.25 * (1 + finalists.ESTIMATE_MARGIN))
    # two finalists on two seeds (2 s) fit a third of a 12 s budget less its tail (2.2 s) only without the margin:
    # the most is kept back (keep_back caps it), not just the final fit's time, so they can still run
    tight = Budget(None, 12.0)
    assert finalists.finishing_cost(search, study, tight) == pytest.approx(2.0 * (1 + finalists.ESTIMATE_MARGIN))


def test_finalists_come_before_the_final_retrain_when_both_do_not_fit():
    study = _study({0.99: "relu", 0.95: "gelu", 0.90: "tanh"})
    search = _search(seeds=3, size=1)  # each finalist's extra seed costs 1 s, the retrain 1.25 s
    top = finalists.top_trials(study, 3)
    assert finalists.plan_finish(search, top, 3.5)[1:] == (2.0, 2, 1.25)  # both fit: 2 finalists x 1 s + retrain
    assert finalists.plan_finish(search, top, 2.5)[1:] == (2.0, 2, 0.0)  # only the finalists fit: they run
    assert finalists.plan_finish(search, top, 1.5)[0] == []  # not even two finalists on two seeds


def test_seed_runs_cost_their_share_of_a_larger_population():
    study = optuna.create_study(direction="maximize")
    t = study.ask()
    t.set_user_attr("config", RunConfig().to_dict())
    t.set_user_attr("population", {"first": 0, "size": 16, "seconds": 8.0})  # 16 members in 8 s: 0.5 s each
    study.tell(t, 0.9)
    trial = study.trials[0]
    # 2 extra seeds as one population of 2: at most twice their 1 s share, not the 16-member population's 8 s
    assert finalists.seed_cost(_search(seeds=3, size=16), trial) == pytest.approx(2.0)
    # 5 extra seeds in populations of 2: two full ones and one of 1 (its 0.5 s share, at most doubled)
    assert finalists.seed_cost(_search(seeds=6, size=2), trial) == pytest.approx(2 * 2.0 + 1.0)
    assert finalists.final_cost(trial) == pytest.approx(1.0 * 1.25)  # one member alone: at most twice its share


def test_a_measured_stacking_gain_replaces_the_bound_in_a_members_estimate():
    study = optuna.create_study(direction="maximize")
    for gain in (1.25, 3.0):
        t = study.ask()
        t.set_user_attr("config", RunConfig().to_dict())
        # 2 members in 8 s, stacked 1.25x faster per member than one alone: one alone takes 8 / 2 * 1.25 = 5 s
        t.set_user_attr("population", {"first": t.number, "size": 2, "seconds": 8.0, "gain": gain})
        study.tell(t, 0.9)
    measured, implausible = study.trials
    assert finalists.seed_cost(_search(seeds=2, size=2), measured) == pytest.approx(5.0)  # the bound said 8 s
    assert finalists.final_cost(measured) == pytest.approx(5.0 * 1.25)
    assert finalists.seed_cost(_search(seeds=3, size=2), measured) == pytest.approx(8.0)  # two: the whole population
    assert finalists.seed_cost(_search(seeds=2, size=2), implausible) == pytest.approx(8.0)  # capped at the bound


def test_a_population_trains_only_while_its_own_members_could_still_be_finalists():
    # oracle: 2 finalists on 2 seeds, populations of 4. A member of a population that trains e seconds costs e/2 per
    # extra seed (its share, at most doubled), so two of them as the top finalists need e; with the margin and the
    # final retrain giving way, e * 1.15 <= min(a third of the budget - the tail, the time left after e)
    study = _study({0.99: "relu", 0.95: "gelu"})
    search = _search(seeds=2, size=4)
    search.cfg = apply_overrides(search.cfg, {"search.finalists": 2})
    budget = Budget(None, 600.0)
    budget.started -= 300.0  # 300 s left, 5 s of them the tail
    share = finalists.ROOM_SHARE  # kept for the step and validation that end a population past its deadline
    room = finalists.population_room(search, study, budget, RunConfig(), 4)
    assert room == pytest.approx(share * (300 - 5) / (2 + finalists.ESTIMATE_MARGIN), abs=0.1)
    budget.started += 200.0  # 500 s left: the third of the budget kept back binds first
    room = finalists.population_room(search, study, budget, RunConfig(), 4)
    assert room == pytest.approx(share * (200 - 5) / (1 + finalists.ESTIMATE_MARGIN), abs=0.1)
    # a lone member costs its whole population's time per seed: 2e for two of them
    assert finalists.population_room(search, study, budget, RunConfig(), 1) == pytest.approx(
        share * ((200 - 5) / (1 + finalists.ESTIMATE_MARGIN) - 1.0), abs=0.1)  # the second finalist is trial 0 (1 s per seed)
    # nothing to keep: no time cap, or finalists off
    assert finalists.population_room(search, study, Budget(None, None), RunConfig(), 4) == float("inf")
    search.cfg = apply_overrides(search.cfg, {"search.finalists": 0})
    assert finalists.population_room(search, study, budget, RunConfig(), 4) == float("inf")


def test_the_seeds_of_a_trial_the_deadline_cut_train_for_the_epochs_it_ran(monkeypatch):
    study = _study({0.99: "relu", 0.95: "gelu"}, {"relu": {"stop_reason": "time budget at epoch 3",
                                                           "history": [{"epoch": e} for e in (1, 2, 3)]}})
    seen = {}

    def fake_fit_configs(cfgs, data_for, size, callbacks=None):
        seen[cfgs[0].model.activation] = [type(cb).__name__ + (f"({cb.epoch})" if hasattr(cb, "epoch") else "")
                                          for cb in callbacks[0]]
        return [(None, FitResult(history=[{"epoch": 1, "val_accuracy": 0.9}], best_epoch=1)) for _ in cfgs]

    monkeypatch.setattr(finalists, "fit_configs", fake_fit_configs)
    finalists.run_finalists(_search(), study, Budget(None, None))
    assert seen == {"relu": ["Deadline", "StopAtEpoch(3)"], "gelu": ["Deadline"]}


def test_a_timed_search_whose_populations_would_outgrow_the_reserve_still_runs_its_finalists(tmp_path):
    """The 10-minute signals runs: a late, slow population took the lead and its members' extra seeds no longer fit
    the time kept back, so no finalist ran. Here every population would train until the search's deadline."""
    from nntune.search.study import tune

    cfg = apply_overrides(RunConfig(), {"data.dataset": "wine", "search.timeout": 20, "search.population": 2,
                                        "search.epochs": 5000, "search.defaults_first": False,
                                        "search.finalists": 2, "search.finalist_seeds": 2,
                                        "search.space": {"model.family": "mlp",
                                                         "train.early_stopping.patience": 5000}})
    result = tune(cfg, tmp_path)
    assert result["finalists"]["chosen"] is not None, result["finalists"]
    assert result["budget"]["fraction_used"] <= 1.02


def _grow_fits(budget=None, seconds=0.0, stop=None):
    """fit_configs for more_seeds: each seed run takes ``seconds`` of the budget's clock; ``stop`` maps a seed to
    the stop reason its run ends with. Records the seeds trained."""
    seen = []

    def fake_fit_configs(cfgs, data_for, size, callbacks=None):
        out = []
        for c in cfgs:
            seen.append(c.seed)
            if budget is not None:
                budget.started -= seconds
            out.append((f"model {c.seed}", FitResult(history=[{"epoch": 1, "val_accuracy": 0.9}], best_epoch=1,
                                                     stop_reason=(stop or {}).get(c.seed, "max_epochs"),
                                                     seconds=seconds)))
        return out
    return fake_fit_configs, seen


def test_the_seed_ensemble_grows_to_final_seeds_with_seeds_the_finalists_did_not_train(monkeypatch):
    study = _study({0.99: "relu"})
    fake, seen = _grow_fits()
    monkeypatch.setattr(finalists, "fit_configs", fake)
    search = _search(seeds=3, size=1)
    search.cfg = apply_overrides(search.cfg, {"search.final_seeds": 5})
    models, why = finalists.more_seeds(search, study.trials[0], 3, Budget(None, None))
    # the finalists trained seeds 1000 and 2000 beside the trial's own 0
    assert seen == [3000, 4000] and models == ["model 3000", "model 4000"] and why == "5 seeds: search.final_seeds"
    search.cfg = apply_overrides(search.cfg, {"search.final_seeds": 3})
    assert finalists.more_seeds(search, study.trials[0], 3, Budget(None, None))[0] == []


def test_the_seed_ensemble_grows_only_while_one_more_seed_fits_the_time_left(monkeypatch):
    # the trial's population (1 member) took 120 s, the finalists' seed run 20 s: the measured seed runs decide.
    # Each seed run here takes 40 s of the 100 s budget (95 s left after the 5 s tail)
    study = _study({0.99: "relu"})
    trial = study.trials[0]
    trial.user_attrs["population"]["seconds"] = 120.0
    search = _search(seeds=2, size=1)
    fake, seen = _grow_fits(budget := Budget(None, 100.0), seconds=40.0)
    monkeypatch.setattr(finalists, "fit_configs", fake)
    models, why = finalists.more_seeds(search, trial, 2, budget, measured=[20.0])
    # 95 s left: 20 s (+15 %) fit; 55 s left: the mean of 20 and 40 fits; 15 s left: the mean 33.3 does not
    assert seen == [2000, 3000] and len(models) == 2
    assert why.startswith("4 seeds: one more needs about 33.3 s, 15.0 s were left") and budget.cut == []
    # with no seed run measured, the trial's own time is the estimate: 120 s (+15 %) do not fit 95 s
    models, why = finalists.more_seeds(search, trial, 2, Budget(None, 100.0))
    assert models == [] and why.startswith("2 seeds: one more needs about 120.0 s")


def test_a_seed_the_deadline_stopped_is_left_out_of_the_ensemble_and_ends_its_growth(monkeypatch):
    study = _study({0.99: "relu"})
    budget = Budget(None, 1000.0)
    fake, seen = _grow_fits(stop={3000: "time budget at epoch 2"})
    monkeypatch.setattr(finalists, "fit_configs", fake)
    models, why = finalists.more_seeds(_search(seeds=2, size=2), study.trials[0], 2, budget)
    assert seen == [2000, 3000] and models == ["model 2000"]  # one population of two; the cut one is not a member
    assert "1 of 2 more seed runs stopped at the deadline or diverged" in why
    assert budget.cut == [f"seed ensemble of trial 0: {why.split(': ', 1)[1]}"]
