"""Early stopping (seed topic 10) with Keras's ``EarlyStopping`` semantics.

The decision is :class:`~nntune.training.monitor.Patience` (Keras's rules, epochs numbered from 1). Beyond Keras: with
``restore_best_weights`` the best weights are also restored when training ends any other way (epochs run out, a
non-finite loss stopped the Trainer, a pruner or Ctrl-C), so the returned model is always the best one seen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from nntune.config import EarlyStoppingConfig
from nntune.training.callbacks import Callback
from nntune.training.epoch import StopRule

if TYPE_CHECKING:
    from nntune.training.single import Trainer


class EarlyStopping(Callback):
    """Stop when the monitored value stops improving; remember (and restore) the best weights."""

    def __init__(self, cfg: EarlyStoppingConfig | None = None, **overrides: object) -> None:
        self.cfg = (cfg or EarlyStoppingConfig()).model_copy(update=overrides)
        self._rule = self._new_rule()
        self.best_weights: dict[str, torch.Tensor] | None = None
        self._restored = False

    def _new_rule(self) -> StopRule:
        return StopRule(self.cfg.model_copy(update={"enabled": True}))  # a callback given is a callback meant

    @property
    def mode(self) -> str:
        return self._rule.patience.mode

    @property
    def best(self) -> float | None:
        return self._rule.patience.best

    @property
    def best_epoch(self) -> int:
        return self._rule.patience.best_epoch

    @property
    def wait(self) -> int:
        return self._rule.patience.wait

    @property
    def stopped_epoch(self) -> int:
        return self._rule.patience.stopped_epoch

    @property
    def restored(self) -> bool:
        """Whether the model now holds the best epoch's weights."""
        return self._restored

    def on_train_begin(self, trainer: Trainer) -> None:
        self._rule = self._new_rule()
        self.best_weights, self._restored = None, False

    def replay(self, history: list[dict], best_weights: dict[str, torch.Tensor] | None) -> None:
        """Pick up a continued run: its past epochs through the rule, and its best-weights snapshot."""
        for row in history:
            self._rule.update(row["epoch"], row)
        self.best_weights = best_weights

    def _restore(self, trainer: Trainer) -> None:
        if self.best_weights is not None:
            trainer.model.load_state_dict(self.best_weights)
            self._restored = True

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        snapshot, reason = self._rule.update(epoch, logs)
        if snapshot:  # only when restoring best weights
            self.best_weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        if reason:
            trainer.stop(reason)
            self._restore(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        if not self._restored:
            self._restore(trainer)
