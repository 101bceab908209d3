import math

import torch

from nntune.config import RunConfig, TrainConfig, apply_overrides
from nntune.data.sources import Dataset
from nntune.training.callbacks import Callback
from nntune.training.early_stopping import EarlyStopping
from nntune.training.pipeline import fit_model, prepare_data, train
from nntune.training.single import Trainer
from nntune.models import build_model
from nntune.config import ModelConfig


def test_digits_defaults_reach_095():
    result = train(RunConfig())
    assert result["test"]["accuracy"] >= 0.95
    h = result["history"][0]
    assert {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "grad_norms"} <= set(h)
    assert result["best_epoch"] >= 1 and result["stop_reason"]


def test_same_seed_same_history():
    cfg = apply_overrides(RunConfig(), {"train.epochs": 3})
    a, b = train(cfg)["history"], train(cfg)["history"]
    assert [h["val_loss"] for h in a] == [h["val_loss"] for h in b]


def test_regression_learns_a_linear_target():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(600, generator=g)
    ds = Dataset("lin", x, y, "regression")
    cfg = apply_overrides(RunConfig(), {"train.epochs": 40, "model.units": 32})
    result = train(cfg, dataset=ds)
    assert result["test"]["r2"] > 0.95 and set(result["test"]) == {"loss", "mae", "r2"}


def test_non_finite_loss_stops_with_reason(digits):
    x = digits.x[:300].clone()
    x[5, 0, 0, 0] = float("nan")
    model = build_model(ModelConfig(), (1, 8, 8), 10)
    t = Trainer(model, "classification", TrainConfig(epochs=5), [EarlyStopping()])
    result = t.fit(x[:200], digits.y[:200], x[200:], digits.y[200:300])
    assert result.stop_reason == "non-finite loss at epoch 1" and result.stopped_epoch == 1
    assert not math.isfinite(result.history[0]["loss"])


def test_callbacks_see_every_epoch_and_can_stop(digits):
    class StopAt2(Callback):
        def __init__(self):
            self.seen = []

        def on_epoch_end(self, trainer, epoch, logs):
            self.seen.append(epoch)
            if epoch == 2:
                trainer.stop("custom")

    cb = StopAt2()
    model = build_model(ModelConfig(), (1, 8, 8), 10)
    r = Trainer(model, "classification", TrainConfig(epochs=10), [cb]).fit(
        digits.x[:200], digits.y[:200], digits.x[200:300], digits.y[200:300])
    assert cb.seen == [1, 2] and r.stop_reason == "custom" and r.stopped_epoch == 2


def test_early_stopping_through_fit_restores_best_epoch_weights(digits):
    cfg = apply_overrides(RunConfig(), {"train.epochs": 40, "train.lr": 0.05, "train.early_stopping.patience": 2})
    data = prepare_data(cfg)
    model, trainer, fit = fit_model(cfg, data)
    assert fit.stop_reason.startswith("early stopping") and fit.stopped_epoch == fit.best_epoch + 2
    # the restored model reproduces the best epoch's validation loss
    assert abs(trainer.evaluate(data.x_val, data.y_val)["loss"] - fit.best["val_loss"]) < 1e-5


def test_optimizers_and_schedules_run(digits):
    for opt, sched in (("sgd", "onecycle"), ("rmsprop", "step"), ("adam", "plateau")):
        cfg = TrainConfig(epochs=3, optimizer=opt, lr=0.01, schedule={"name": sched, "warmup_epochs": 1},
                          grad_clip=1.0, label_smoothing=0.1)
        model = build_model(ModelConfig(), (1, 8, 8), 10)
        r = Trainer(model, "classification", cfg).fit(digits.x[:300] / 16, digits.y[:300],
                                                       digits.x[300:400] / 16, digits.y[300:400])
        assert len(r.history) == 3 and all(math.isfinite(h["loss"]) for h in r.history)


def test_unusable_device_is_a_config_error():
    import pytest

    from nntune.errors import ConfigError
    from nntune.training.device import resolve_device

    with pytest.raises(ConfigError, match="train.device: unknown device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no usable CUDA GPU"):
            resolve_device("cuda")


def test_frozen_batch_norm_keeps_its_running_statistics(digits):
    from nntune.models import freeze

    model = build_model(ModelConfig(batch_norm=True), (1, 8, 8), 10)
    freeze(model, "bn1")
    before = model.bn1.running_mean.clone()
    Trainer(model, "classification", TrainConfig(epochs=1)).fit(digits.x[:200], digits.y[:200],
                                                               digits.x[200:300], digits.y[200:300])
    assert torch.equal(model.bn1.running_mean.cpu(), before)
    assert model.bn2.running_mean.abs().sum() > 0


def test_without_restore_the_best_epoch_is_the_last(digits):
    cfg = apply_overrides(RunConfig(), {"train.epochs": 4, "train.early_stopping.enabled": False})
    _, _, fit = fit_model(cfg, prepare_data(cfg))
    assert fit.best_epoch == 4 and fit.best == fit.history[-1]
