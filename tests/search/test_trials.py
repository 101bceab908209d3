import optuna
import pytest
import torch

from nntune.config import RunConfig, apply_overrides
from nntune.search import trials as trials_module
from nntune.search.study import tune


def test_a_population_out_of_memory_is_retried_in_smaller_populations(tmp_path, monkeypatch):
    real = trials_module.fit_population

    def small_memory(cfgs, data, callbacks=None, catch_interrupt=False):
        if len(cfgs) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(cfgs, data, callbacks, catch_interrupt)

    monkeypatch.setattr(trials_module, "fit_population", small_memory)
    cfg = apply_overrides(RunConfig(), {"data.dataset": "wine", "search.trials": 4, "search.epochs": 2,
                                        "search.population": 4, "search.defaults_first": False,
                                        "search.finalists": 0})
    result = tune(cfg, tmp_path)
    study = optuna.load_study(study_name="nntune", storage=f"sqlite:///{tmp_path / 'study.db'}")
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    retried = [t for t in study.trials if "retry_of_oom" in t.user_attrs]
    # 4 fail together, are retried 2 at a time (2 fail again), then one at a time
    assert len(failed) == 6 and all("out of memory" in t.user_attrs["fail_reason"] for t in failed)
    assert sorted(t.user_attrs["retry_of_oom"] for t in retried) == [t.number for t in failed]
    assert all(r.params == study.trials[r.user_attrs["retry_of_oom"]].params for r in retried)
    assert result["trials"]["complete"] + result["trials"]["pruned"] == 4
    assert result["study"]["population_sizes"] == {"mlp": 1}  # halved twice: 4 -> 2 -> 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed interrupt
def test_a_ctrl_c_swallowed_by_a_gc_callback_still_stops_the_search():
    """Python drops a KeyboardInterrupt raised inside a weakref callback; the record makes the next check raise."""
    import signal
    import weakref

    from nntune.training.callbacks import Interrupts

    class Thing:
        pass

    with Interrupts() as interrupts:
        thing = Thing()
        ref = weakref.ref(thing, lambda _: signal.raise_signal(signal.SIGINT))
        del thing  # the callback raises KeyboardInterrupt, which Python reports as ignored
        assert ref() is None and interrupts.seen
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_while_results_are_recorded_waits_for_them(sig):
    """Inside ``deferred`` a signal is recorded, and raised once the block has done its work."""
    import os
    import signal

    from nntune.training.callbacks import Interrupts

    done = []
    with Interrupts() as interrupts:
        with pytest.raises(KeyboardInterrupt):
            with interrupts.deferred():
                os.kill(os.getpid(), getattr(signal, sig))
                os.kill(os.getpid(), getattr(signal, sig))  # a second one, 0 s later: still recorded, not raised
                done.append("told")
        assert done == ["told"] and interrupts.seen
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def _wine(**over):
    return apply_overrides(RunConfig(), {"data.dataset": "wine", "search.trials": 6, "search.epochs": 3,
                                         "search.population": 2, "search.finalists": 0,
                                         "search.space": {"model.family": "mlp"}, **over})


def test_a_ctrl_c_right_after_a_trials_weights_are_saved_keeps_it_complete(tmp_path, monkeypatch):
    """The reported case: SIGINT lands while the first finished trial's weights are written. That trial stays
    COMPLETE, the search ends, and the final model is fitted from it."""
    import os
    import signal

    real, calls = trials_module.artifacts.save, []

    def save_then_interrupt(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(trials_module.artifacts, "save", save_then_interrupt)
    result = tune(_wine(), tmp_path)
    study = optuna.load_study(study_name="nntune", storage=f"sqlite:///{tmp_path / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert result["interrupted"] and result["budget"]["stopped_by"] == "interrupted"
    assert states.count("COMPLETE") >= 1 and "RUNNING" not in states
    assert all(s == "COMPLETE" for s in states[:len(calls)])  # every trial whose weights were saved
    assert (tmp_path / "best" / "weights.safetensors").is_file()


def test_a_second_signal_ends_at_once_and_keeps_the_finished_trials(tmp_path, monkeypatch):
    import os
    import signal

    from nntune.search import final as final_module  # the final fit

    real_save, real_fit = trials_module.artifacts.save, final_module.fit_model

    def save_then_interrupt(*args, **kwargs):
        out = real_save(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # the first: finish cleanly
        return out

    def fit_then_interrupt(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the second, during the final fit: end now
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(trials_module.artifacts, "save", save_then_interrupt)
    monkeypatch.setattr(final_module, "fit_model", fit_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        tune(_wine(), tmp_path)
    study = optuna.load_study(study_name="nntune", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [t.state.name for t in study.trials][:1] == ["COMPLETE"]
    assert "RUNNING" not in {t.state.name for t in study.trials}


def test_every_default_trial_runs_under_a_budget_too_short_for_them(tmp_path):
    """Issue 26: the floor under any budget. The defaults (MLP, CNN and the regularized CNN for images) that would
    each train for far longer than the budget all run, each cut to its share of the time, before any sampled trial;
    the cut says so."""
    cfg = apply_overrides(RunConfig(), {"data.dataset": "digits", "search.timeout": 12, "search.population": 1,
                                        "train.epochs": 400, "search.space": {"train.early_stopping.patience": 400},
                                        "search.finalists": 0, "search.final": "best_trial"})
    result = tune(cfg, tmp_path)
    study = optuna.load_study(study_name="nntune", storage=f"sqlite:///{tmp_path / 'study.db'}")
    defaults = [t for t in study.trials if t.user_attrs.get("default")]
    assert sorted(t.user_attrs["config"]["model"]["family"] for t in defaults) == ["cnn", "cnn", "mlp"]
    assert all(t.state.name == "COMPLETE" and t.user_attrs["stop_reason"].startswith("time budget")
               for t in defaults), [(t.state.name, t.user_attrs.get("stop_reason")) for t in defaults]
    assert [t.number for t in study.trials[:3]] == sorted(t.number for t in defaults)
    seconds = [t.user_attrs["seconds"] for t in defaults]  # an equal share each (two defaults: was 7.4 s against 1.9 s)
    assert min(seconds) >= 0.25 * sum(seconds)
    assert sum("budget is short for the untuned defaults" in c for c in result["budget"]["cut"]) == 3


def test_a_trial_asked_beyond_the_cap_by_racing_workers_fails_untrained(tmp_path):
    """Two workers that counted the same last free slot both ask; the one that started later is over the cap: told
    FAIL before training (an enqueued trial it had taken waits again), so the study ends at --trials exactly."""
    from nntune.search.setup import prepare_search
    from nntune.search.study import open_study

    search = prepare_search(_wine(**{"search.defaults_first": False}), tmp_path)
    study = open_study(search, resume=False)
    earlier = [study.ask() for _ in range(2)]  # another worker's trials, running
    study.enqueue_trial({"train.lr": 0.01}, user_attrs={"default": True})
    with trials_module.Heartbeats(study) as beats:
        with pytest.raises(trials_module.OverCap):
            trials_module._ask(search, study, beats, cap=2)  # takes the enqueued trial
        (admitted, _), _ = trials_module._ask(search, study, beats, cap=4)  # takes it again, within the cap
    late = study.trials[2]
    assert late.state.name == "FAIL" and "over --trials 2" in late.user_attrs["fail_reason"]
    assert late.user_attrs["over_cap"] == 2
    assert "config" not in late.user_attrs  # never trained
    assert admitted.number == 3 and admitted.user_attrs["default"] and admitted.params["train.lr"] == 0.01
    assert all(study.trials[t.number].state.name == "RUNNING" for t in earlier)
