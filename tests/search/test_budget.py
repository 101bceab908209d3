import math
import time

import optuna
import pytest
import torch

from nntune import artifacts
from nntune.config import RunConfig, apply_overrides
from nntune.search.budget import Budget, with_report
from nntune.search.objectives import best_trial
from nntune.search.final import final_fit
from nntune.search.setup import prepare_search
from nntune.search.study import tune


@pytest.mark.parametrize("trials,timeout,expected", [
    (None, None, (20, None)),  # neither: today's default trial count
    (7, None, (7, None)),      # trials alone: no time cap
    (None, 30.0, (None, 30.0)),  # timeout alone: no trial cap
    (7, 30.0, (7, 30.0)),      # both: whichever comes first
])
def test_budget_from_the_config(trials, timeout, expected):
    over = {k: v for k, v in (("search.trials", trials), ("search.timeout", timeout)) if v is not None}
    b = Budget.from_config(apply_overrides(RunConfig(), over).search)
    assert (b.trials, b.timeout) == expected
    assert (b.search_left() == math.inf) == (timeout is None)


def test_reserve_is_capped_at_a_third_and_stops_the_search_early():
    b = Budget(None, 30.0, started=0.0)
    b.keep_back(100.0)
    assert b.reserve == pytest.approx(10.0)
    b.started -= 1e9  # long past the deadline
    study = optuna.create_study()
    assert b.check(study) == "timeout" and b.search_left() < 0


def test_a_population_starts_only_when_asking_and_recording_it_fits_and_trains_until_recording_must_start():
    b = Budget(None, 30.0)
    b.keep_back(0.0)  # reserve: the 4.5 s tail
    study = optuna.create_study()
    b.overhead, b.record = 20.0, 3.0  # the last population took 20 s to ask and record, 3 s of it recording
    assert b.check(study) is None and b.training_left() == pytest.approx(b.search_left() - 3.0)
    b.overhead = 26.0  # more than the 25.5 s the search has left: none starts
    assert b.check(study) == "timeout"


def test_trial_cap_counts_finished_and_running_trials():
    study = optuna.create_study()
    b = Budget(3, None)
    running = study.ask()
    study.tell(study.ask(), 1.0)
    assert b.trials_left(study) == 1 and b.check(study) is None
    study.tell(running, 2.0)
    study.tell(study.ask(), 3.0)
    assert b.trials_left(study) == 0 and b.check(study) == "trials"
    assert b.to_dict()["stopped_by"] == "trials" and b.to_dict()["fraction_used"] is None


def test_the_tail_is_kept_for_the_report_and_what_a_deadline_cut_is_reported():
    b = Budget(None, 20.0)
    b.keep_back(3.0)
    assert b.tail == pytest.approx(3.0) and b.reserve == pytest.approx(6.0)  # 15 % of a short budget
    assert Budget(None, 600.0).tail == 5.0 and Budget(5, None).finish_left() == math.inf
    b.cut.append("final retrain skipped")
    assert b.to_dict()["cut"] == ["final retrain skipped"]
    assert with_report({**b.to_dict(), "seconds": 19.0}, 1.2)["fraction_used"] == pytest.approx(1.01)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A finished small search, and what final_fit needs to fit its best trial again."""
    out = tmp_path_factory.mktemp("run")
    cfg = apply_overrides(RunConfig(), {"data.dataset": "wine", "search.trials": 2, "search.epochs": 4,
                                        "search.finalists": 0, "search.space": {"model.family": "mlp"}})
    tune(cfg, out)
    search = prepare_search(cfg, out)
    return search, best_trial(optuna.load_study(study_name="nntune", storage=f"sqlite:///{out / 'study.db'}"))


def test_a_final_retrain_that_does_not_fit_the_time_left_keeps_the_chosen_trials_weights(searched):
    search, best = searched
    late = Budget(None, 60.0, started=time.monotonic() - 59.0)  # one second left
    final = final_fit(search, best, late)
    assert final["mode"] == "best_trial" and final["history"] == []
    assert late.cut and late.cut[0].startswith("final retrain skipped")
    kept = artifacts.load(search.out / "trials" / str(best.number))
    assert all(torch.equal(a, b) for a, b in zip(kept.model.state_dict().values(),
                                                 artifacts.load(search.out / "best").model.state_dict().values()))


def test_a_final_retrain_that_reaches_its_deadline_stops_within_an_epoch(searched, monkeypatch):
    search, best = searched
    budget = Budget(None, 600.0)
    calls = []

    def finish_left():  # plenty of time for the estimate, then the deadline passes after the first step
        calls.append(1)
        return 100.0 if len(calls) == 1 else -1.0

    monkeypatch.setattr(budget, "finish_left", finish_left)
    final = final_fit(search, best, budget)
    # asked for the estimate, after the first step (the deadline has passed: training stops there), at that epoch's end
    assert final["mode"] == "best_trial" and len(calls) == 3
    assert "final retrain reached the deadline after 1 of" in budget.cut[0]
