"""Continuing a run from a saved state: the same weights and history as one run straight through (float64)."""

import pytest
import torch

from nntune.config import RunConfig, apply_overrides
from nntune.data.sources import Dataset
from nntune.errors import ArtifactError, TrainingError
from nntune.training import resume
from nntune.training.callbacks import Callback, StopAtEpoch
from nntune.training.pipeline import fit_model, fit_population, prepare_data


class Capture(Callback):
    """Keeps the run's state after ``epoch`` (once every run trained together has logged it)."""

    def __init__(self, epoch):
        self.epoch, self.state = epoch, None

    def on_epochs_logged(self, trainer, epoch):
        if epoch == self.epoch:
            self.state = trainer.state()


@pytest.fixture(scope="module")
def tiny(digits):
    return Dataset(digits.name, digits.x[:160].double(), digits.y[:160], digits.task, digits.class_names)


CASES = {
    "adamw-cosine": {"train.schedule.name": "cosine"},
    "sgd-nesterov-onecycle-clip": {"train.optimizer": "sgd", "train.momentum": 0.9, "train.nesterov": True,
                                   "train.schedule.name": "onecycle", "train.grad_clip": 0.5},
    "rmsprop-momentum-plateau-restore": {"train.optimizer": "rmsprop", "train.momentum": 0.5, "train.lr": 3e-3,
                                         "train.schedule.name": "plateau", "train.schedule.plateau_patience": 0,
                                         "train.early_stopping.patience": 2},
    "adam-step-warmup-bn": {"train.optimizer": "adam", "train.schedule.name": "step", "train.schedule.step_size": 2,
                            "train.schedule.warmup_epochs": 1, "model.batch_norm": True},
}


def straight_and_continued(cfg, data, cut, end, resume_from=None):
    straight, _, f1 = fit_model(cfg, data, [StopAtEpoch(end)])
    cap = Capture(cut)
    if resume_from is None:
        fit_model(cfg, data, [cap, StopAtEpoch(cut)])
        state = cap.state
    else:
        state = resume_from
    model, trainer, f2 = fit_model(cfg, data, [StopAtEpoch(end)], resume=state)
    return (straight, f1), (model, f2), state


def assert_same(a, b):
    (m1, f1), (m2, f2) = a, b
    for k, v in m1.state_dict().items():
        assert torch.allclose(v.double(), m2.state_dict()[k].double()), k
    assert len(f1.history) == len(f2.history)
    for h1, h2 in zip(f1.history, f2.history):
        for k in ("loss", "val_loss", "lr"):
            assert h1[k] == pytest.approx(h2[k], rel=1e-6), k
    assert (f1.best_epoch, f1.stop_reason) == (f2.best_epoch, f2.stop_reason)


@pytest.mark.parametrize("case", list(CASES))
def test_a_continued_trainer_matches_one_run_straight_through(case, float64, tiny, tmp_path):
    cfg = apply_overrides(RunConfig(), {"train.epochs": 8, "train.early_stopping.patience": 100, "model.units": 32,
                                        **CASES[case]})
    data = prepare_data(cfg, tiny)
    straight, continued, state = straight_and_continued(cfg, data, 3, 6)
    assert state.epoch == 3 and state.moments
    assert_same(straight, continued)
    # through the files: the same again
    resume.save(tmp_path / "s", state)
    loaded = resume.load(tmp_path / "s")
    _, again, _ = straight_and_continued(cfg, data, 3, 6, resume_from=loaded)
    assert_same(straight, again)


@pytest.mark.parametrize("stacked", [False, True], ids=["memberwise-opt", "stacked-opt"])
@pytest.mark.parametrize("case", ["sgd-nesterov-onecycle-clip", "rmsprop-momentum-plateau-restore"])
def test_a_population_member_continues_alone_as_if_never_stopped(case, stacked, float64, tiny, monkeypatch):
    from nntune.training.population import PopulationTrainer

    monkeypatch.setattr(PopulationTrainer, "stacked_optimizer", stacked)
    base = apply_overrides(RunConfig(), {"train.epochs": 8, "train.early_stopping.patience": 100, "model.units": 32,
                                        **CASES[case]})
    cfgs = [apply_overrides(base, {"seed": i, "train.lr": base.train.lr * (1 + i)}) for i in range(3)]
    data = prepare_data(cfgs[0], tiny)
    caps = [Capture(3) for _ in cfgs]
    fit_population(cfgs, data, [[cap, StopAtEpoch(3 + i)] for i, cap in enumerate(caps)])  # members leave apart
    for m in (0, 2):
        straight, continued, _ = straight_and_continued(cfgs[m], data, 3, 6, resume_from=caps[m].state)
        assert_same(straight, continued)


def test_continuing_past_the_end_and_a_damaged_state_are_refused(float64, tiny, tmp_path):
    cfg = apply_overrides(RunConfig(), {"train.epochs": 3})
    data = prepare_data(cfg, tiny)
    cap = Capture(3)
    fit_model(cfg, data, [cap])
    with pytest.raises(TrainingError, match="cannot continue after epoch 3"):
        fit_model(cfg, data, resume=cap.state)
    assert resume.load(tmp_path / "none") is None
    resume.save(tmp_path / "s", cap.state)
    (tmp_path / "s" / "state.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="cannot read the saved training state"):
        resume.load(tmp_path / "s")
