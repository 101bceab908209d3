import pytest
import torch
from torch import nn

from nntune.config import EarlyStoppingConfig
from nntune.training.early_stopping import EarlyStopping


class FakeTrainer:
    """Holds a one-weight model whose value is set to the epoch number, so restores are visible."""

    def __init__(self):
        self.model = nn.Linear(1, 1, bias=False)
        self.reason = None

    def stop(self, reason):
        self.reason = self.reason or reason


def run(values, monitor="val_loss", **kw):
    cb = EarlyStopping(EarlyStoppingConfig(monitor=monitor, **kw))
    t = FakeTrainer()
    cb.on_train_begin(t)
    for epoch, v in enumerate(values, start=1):
        with torch.no_grad():
            t.model.weight.fill_(epoch)
        cb.on_epoch_end(t, epoch, {"loss": 1.0, monitor: v})
        if t.reason:
            break
    cb.on_train_end(t)
    return cb, t


def test_stops_after_patience_and_restores_best():
    cb, t = run([1.0, 0.9, 0.95, 0.96, 0.8], patience=2)
    assert (cb.stopped_epoch, cb.best_epoch) == (4, 2)
    assert "did not improve for 2 epochs" in t.reason
    assert t.model.weight.item() == 2


def test_patience_zero_stops_at_first_non_improvement():
    cb, _ = run([1.0, 0.5, 0.6, 0.1], patience=0)
    assert (cb.stopped_epoch, cb.best_epoch) == (3, 2)


def test_min_delta_requires_big_enough_improvement():
    cb, _ = run([1.0, 0.95, 0.97, 0.85, 0.8, 0.8, 0.8], patience=3, min_delta=0.1)
    # 0.95 is not 0.1 better than 1.0, 0.85 is (best epoch 4), 0.8 is not 0.1 better than 0.85 -> stop at 7
    assert (cb.stopped_epoch, cb.best_epoch) == (7, 4)


def test_baseline_keeps_wait_running_until_beaten():
    # Keras: improvements that do not beat the baseline do not reset wait, stop checks only on non-improvements
    cb, t = run([1.0, 0.9, 0.9, 0.9], patience=2, baseline=0.5)
    assert (cb.stopped_epoch, cb.best_epoch) == (3, 2)
    assert t.model.weight.item() == 2


def test_start_from_epoch_ignores_warmup_epochs():
    cb, _ = run([0.1, 0.2, 1.0, 1.1, 1.2, 1.3], patience=2, start_from_epoch=2)
    assert (cb.stopped_epoch, cb.best_epoch) == (5, 3)


def test_max_mode_inferred_for_accuracy():
    cb, t = run([0.5, 0.7, 0.6, 0.65], monitor="val_accuracy", patience=2)
    assert cb.mode == "max" and (cb.stopped_epoch, cb.best_epoch) == (4, 2)


def test_restores_best_when_epochs_run_out_and_can_be_disabled():
    cb, t = run([1.0, 0.5, 0.7], patience=5)
    assert cb.stopped_epoch == 0 and t.model.weight.item() == 2
    cb, t = run([1.0, 0.5, 0.7], patience=5, restore_best_weights=False)
    assert t.model.weight.item() == 3


def test_unknown_monitor_names_key():
    from nntune.errors import ConfigError

    with pytest.raises(ConfigError, match="monitor: 'val_f1' is not logged"):
        run([1.0], monitor="val_loss", patience=1) and EarlyStopping(monitor="val_f1").on_epoch_end(
            FakeTrainer(), 1, {"val_loss": 1.0})
