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


class Patience:
    """The early-stopping decision alone, one monitored value per epoch: shared by the Trainer's callback and the
    population trainer (one per member), so both stop at the same epoch for the same curve."""

    def __init__(self, cfg: EarlyStoppingConfig) -> None:
        self.cfg = cfg
        self.mode = monitor_mode(cfg.monitor, cfg.mode)
        self.best: float | None = None
        self.best_epoch = 0
        self.wait = 0
        self.stopped_epoch = 0

    def update(self, epoch: int, value: float) -> tuple[bool, str | None]:
        """(take a snapshot of the weights now, the stop reason or None) after ``epoch`` scored ``value``.

        The first epoch considered is always an improvement (there is no reference yet), so a snapshot exists from
        then on."""
        if epoch <= self.cfg.start_from_epoch:
            return False, None
        self.wait += 1
        if is_improvement(value, self.best, self.mode, self.cfg.min_delta):
            self.best, self.best_epoch = value, epoch
            if self.cfg.baseline is None or is_improvement(value, self.cfg.baseline, self.mode, self.cfg.min_delta):
                self.wait = 0
            return True, None
        if self.wait >= self.cfg.patience and epoch > 1:
            self.stopped_epoch = epoch
            return False, f"early stopping: {self.cfg.monitor} did not improve for {self.wait} epochs"
        return False, None


def check_monitor(monitor: str, logs: dict[str, float]) -> float:
    """The monitored value from an epoch's logs; a monitor that is not logged is a ConfigError listing what is."""
    if monitor not in logs:
        known = ", ".join(sorted(k for k in logs if k not in ("epoch", "lr", "seconds")))
        raise ConfigError(f"train.early_stopping.monitor: {monitor!r} is not logged (logged: {known})")
    return logs[monitor]


class EarlyStopping(Callback):
    """Stop when the monitored value stops improving; remember (and restore) the best weights."""

    def __init__(self, cfg: EarlyStoppingConfig | None = None, **overrides: object) -> None:
        self.cfg = (cfg or EarlyStoppingConfig()).model_copy(update=overrides)
        self._patience = Patience(self.cfg)
        self.best_weights: dict[str, torch.Tensor] | None = None
        self._restored = False

    @property
    def mode(self) -> str:
        return self._patience.mode

    @property
    def best(self) -> float | None:
        return self._patience.best

    @property
    def best_epoch(self) -> int:
        return self._patience.best_epoch

    @property
    def wait(self) -> int:
        return self._patience.wait

    @property
    def stopped_epoch(self) -> int:
        return self._patience.stopped_epoch

    @property
    def restored(self) -> bool:
        """Whether the model now holds the best epoch's weights."""
        return self._restored

    def on_train_begin(self, trainer: Trainer) -> None:
        self._patience = Patience(self.cfg)
        self.best_weights, self._restored = None, False

    def _snapshot(self, trainer: Trainer) -> None:
        if self.cfg.restore_best_weights:
            self.best_weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    def _restore(self, trainer: Trainer) -> None:
        if self.cfg.restore_best_weights and self.best_weights is not None:
            trainer.model.load_state_dict(self.best_weights)
            self._restored = True

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        snapshot, reason = self._patience.update(epoch, check_monitor(self.cfg.monitor, logs))
        if snapshot:
            self._snapshot(trainer)
        if reason:
            trainer.stop(reason)
            self._restore(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        if not self._restored:
            self._restore(trainer)
