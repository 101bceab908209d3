import math

import optuna
import pytest

from nntune.config import RunConfig, apply_overrides
from nntune.search.budget import Budget


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
