import pytest
import torch

from nntune.config import RunConfig, apply_overrides
from nntune.errors import ConfigError
from nntune.models import build_model
from nntune.training.diagnostics import diagnose
from nntune.training.lr_finder import lr_find
from nntune.training.pipeline import fit_model, prepare_data


@pytest.fixture(scope="module")
def prepared():
    return prepare_data(RunConfig())


@pytest.fixture(scope="module")
def found(prepared):
    cfg = RunConfig()
    model = build_model(cfg.model, (1, 8, 8), 10)
    return lr_find(model, "classification", prepared.x_train, prepared.y_train, cfg.train)


def test_weights_and_optimizer_identical_after(prepared):
    cfg = RunConfig()
    model = build_model(cfg.model, (1, 8, 8), 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(prepared.x_train[:8]).sum().backward()
    opt.step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = {k: v.clone() for k, v in opt.state_dict()["state"][0].items()}
    lr_find(model, "classification", prepared.x_train, prepared.y_train, cfg.train, optimizer=opt, steps=30)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(opt_before[k], v) for k, v in opt.state_dict()["state"][0].items())
    assert opt.param_groups[0]["lr"] == 1e-3


def test_curve_stops_after_divergence_and_suggests_three(found):
    assert set(found.suggestions) == {"steepest", "valley", "min_div_10"}
    assert found.method == "steepest" and found.suggestion == found.suggestions["steepest"]
    assert len(found.lrs) < 100 and found.losses[-1] > 4 * min(found.losses) * 0.99
    assert 1e-5 < found.suggestion < 1e-1 and found.warnings == []
    lrs = found.lrs
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-7)


def test_suggested_lr_trains_at_least_as_well_as_default(prepared, found):
    def best_val_acc(lr):
        cfg = apply_overrides(RunConfig(), {"train.lr": lr, "train.epochs": 5})
        return max(h["val_accuracy"] for h in fit_model(cfg, prepared)[2].history)

    assert best_val_acc(found.suggestion) >= best_val_acc(1e-3)


def test_hundred_times_the_suggestion_is_flagged_diverging(prepared, found):
    cfg = apply_overrides(RunConfig(), {"train.lr": 100 * found.suggestion, "train.epochs": 5})
    model, _, fit = fit_model(cfg, prepared)
    codes = [f.code for f in diagnose(fit.history, model, prepared.x_val, fit.initial_val_loss)]
    assert "diverging" in codes


def test_flat_and_noisy_curves_warn():
    from nntune.config import TrainConfig

    x = torch.randn(256, 4)
    y = torch.randint(0, 2, (256,))  # labels unrelated to inputs, and a tiny LR range: nothing to learn
    model = build_model(RunConfig().model, (4,), 2)
    full_batch = TrainConfig(batch_size=256)
    r = lr_find(model, "classification", x, y, full_batch, start_lr=1e-7, end_lr=1e-6, steps=30)
    assert any("too flat" in w for w in r.warnings)
    r = lr_find(model, "classification", x, y, TrainConfig(batch_size=16), start_lr=1e-7, end_lr=1e-6, steps=30)
    assert any("too noisy" in w for w in r.warnings)


def test_bad_ranges():
    model = build_model(RunConfig().model, (4,), 2)
    with pytest.raises(ConfigError, match="start_lr < end_lr"):
        lr_find(model, "classification", torch.randn(8, 4), torch.zeros(8, dtype=torch.long), start_lr=1, end_lr=0.1)


@pytest.mark.parametrize("command", ["lr-find", "explain"])
def test_every_range_test_clips_a_recurrent_model_as_training_does(command, monkeypatch):
    """``nntune lr-find``, ``--lr auto`` and the evidence's range test all go through pipeline.range_test, which
    gives lr_find the settings training uses (an RNN clips at RNN_GRAD_CLIP); before, two passed ``cfg.train``."""
    from nntune.training.settings import RNN_GRAD_CLIP
    from nntune.data.sources import load_signals
    from nntune.evidence import explain
    from nntune.training import pipeline

    seen = []
    monkeypatch.setattr(pipeline, "lr_find", lambda model, task, x, y, cfg, **kw: seen.append(cfg.grad_clip))
    cfg = apply_overrides(RunConfig(), {"model.family": "rnn", "model.rnn_units": 8})
    data = prepare_data(cfg, load_signals(n=120, length=16))
    if command == "lr-find":
        pipeline.range_test(cfg, data)
    else:
        explain._range_test(cfg, type("S", (), {"data_for": lambda self, c: data})())
    assert seen == [RNN_GRAD_CLIP]
