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

    from nntune.search.trials import Interrupts

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
