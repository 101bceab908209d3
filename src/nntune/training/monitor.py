"""What "better" means for a monitored value, and the early-stopping decision (Keras's ``EarlyStopping`` rules).

Epochs are numbered from 1 here (Keras counts from 0), so Keras's "never stop on the first epoch" reads
``epoch > 1``. Like Keras: ``wait`` grows every epoch and resets on an improvement that also beats ``baseline``;
training stops when ``wait >= patience``; epochs up to ``start_from_epoch`` are ignored. The single-model callback,
the population engine (one per member), reduce-on-plateau and the evidence's replay all decide with these.
"""

from __future__ import annotations

from nntune.config import EarlyStoppingConfig
from nntune.errors import ConfigError


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
