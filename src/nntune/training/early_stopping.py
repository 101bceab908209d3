"""Early stopping (seed topic 10) with Keras's ``EarlyStopping`` semantics.

Epochs are numbered from 1 here (Keras counts from 0), so Keras's "never stop on the first epoch" reads
``epoch > 1``. Like Keras: ``wait`` grows every epoch and resets on an improvement that also beats ``baseline``;
training stops when ``wait >= patience``; epochs up to ``start_from_epoch`` are ignored. Beyond Keras: with
``restore_best_weights`` the best weights are also restored when training ends any other way (epochs run out, a
non-finite loss stopped the Trainer, a pruner or Ctrl-C), so the returned model is always the best one seen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from nntune.config import EarlyStoppingConfig
from nntune.errors import ConfigError
from nntune.training.callbacks import Callback

if TYPE_CHECKING:
    from nntune.training.trainer import Trainer


def monitor_mode(monitor: str, mode: str = "auto") -> str:
    """``min`` for losses and errors, ``max`` for accuracy and R²."""
    if mode != "auto":
        return mode
    return "max" if any(k in monitor for k in ("accuracy", "acc", "r2", "auc")) else "min"


def is_improvement(value: float, reference: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Keras's test: better than ``reference`` by more than ``min_delta`` (always true without a reference)."""
    if reference is None:
        return True
    return value + min_delta < reference if mode == "min" else value - min_delta > reference


class EarlyStopping(Callback):
    """Stop when the monitored value stops improving; remember (and restore) the best weights."""

    def __init__(self, cfg: EarlyStoppingConfig | None = None, **overrides: object) -> None:
        cfg = (cfg or EarlyStoppingConfig()).model_copy(update=overrides)
        self.cfg = cfg
        self.mode = monitor_mode(cfg.monitor, cfg.mode)
        self.best: float | None = None
        self.best_epoch = 0
        self.wait = 0
        self.stopped_epoch = 0
        self.best_weights: dict[str, torch.Tensor] | None = None
        self._restored = False

    def _is_improvement(self, value: float, reference: float | None) -> bool:
        return is_improvement(value, reference, self.mode, self.cfg.min_delta)

    @property
    def restored(self) -> bool:
        """Whether the model now holds the best epoch's weights."""
        return self._restored

    def on_train_begin(self, trainer: Trainer) -> None:
        self.best, self.best_epoch, self.wait, self.stopped_epoch, self.best_weights = None, 0, 0, 0, None
        self._restored = False

    def _snapshot(self, trainer: Trainer) -> None:
        if self.cfg.restore_best_weights:
            self.best_weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    def _restore(self, trainer: Trainer) -> None:
        if self.cfg.restore_best_weights and self.best_weights is not None:
            trainer.model.load_state_dict(self.best_weights)
            self._restored = True

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        if self.cfg.monitor not in logs:
            known = ", ".join(sorted(k for k in logs if k not in ("epoch", "lr", "seconds")))
            raise ConfigError(f"train.early_stopping.monitor: {self.cfg.monitor!r} is not logged (logged: {known})")
        current = logs[self.cfg.monitor]
        if epoch <= self.cfg.start_from_epoch:
            return
        if self.best_weights is None:
            self._snapshot(trainer)
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best, self.best_epoch = current, epoch
            self._snapshot(trainer)
            if self.cfg.baseline is None or self._is_improvement(current, self.cfg.baseline):
                self.wait = 0
            return
        if self.wait >= self.cfg.patience and epoch > 1:
            self.stopped_epoch = epoch
            trainer.stop(f"early stopping: {self.cfg.monitor} did not improve for {self.wait} epochs")
            self._restore(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        if not self._restored:
            self._restore(trainer)
