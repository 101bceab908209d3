"""The epoch both training loops share: the batch plan, the history row, the stop rule and what a fit returns.

:class:`~nntune.training.single.Trainer` (one model) and the population engine (K members at once) run their batches
differently, but an epoch means the same to both, and the evidence replays recorded curves with the same rule:
the batches come from one plan, a row of the history has one shape, a non-finite loss ends training unseen by early
stopping, and the weights kept are the best snapshot when early stopping restores, else the last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from nntune.config import EarlyStoppingConfig
from nntune.training.monitor import Patience, check_monitor


@dataclass(frozen=True)
class BatchPlan:
    """Which samples an epoch visits in batches of ``size``: a trailing batch of one sample breaks batch norm, so it
    is dropped (it is reshuffled next epoch)."""

    n: int
    size: int
    used: int
    steps: int

    @classmethod
    def of(cls, n: int, batch_size: int) -> BatchPlan:
        size = min(batch_size, n)
        used = n - 1 if n % size == 1 and n > 1 else n
        return cls(n, size, used, math.ceil(used / size))

    def starts(self) -> range:
        """The first index of every batch within the epoch's order."""
        return range(0, self.used, self.size)

    def is_last(self, start: int) -> bool:
        return start + self.size >= self.used

    def order(self, gen: torch.Generator) -> torch.Tensor:
        """This epoch's sample order: a seeded permutation, cut to the samples used."""
        return torch.randperm(self.n, generator=gen)[:self.used]


@dataclass
class FitResult:
    """What happened during a fit: per-epoch history and why training ended."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    stopped_epoch: int = 0
    stop_reason: str = "max_epochs"
    seconds: float = 0.0
    initial_val_loss: float = math.nan  # before the first step: the reference for "is it learning at all"

    @property
    def best(self) -> dict:
        """The history row of the best epoch."""
        last = self.history[-1] if self.history else {}
        return next((h for h in self.history if h["epoch"] == self.best_epoch), last)

    @property
    def best_val(self) -> dict[str, float]:
        """Validation metrics of the best epoch, without the ``val_`` prefix."""
        return {k.removeprefix("val_"): v for k, v in self.best.items() if k.startswith("val_")}


def epoch_logs(epoch: int, train: Sequence[float], metric: str, val: dict[str, float], lr: float,
               seconds: float) -> dict[str, float]:
    """What callbacks see after an epoch: training loss and metric (``train``), ``val_*``, the epoch's LR and time."""
    logs = {"epoch": epoch, "loss": train[0], metric: train[1]}
    logs.update({f"val_{k}": v for k, v in val.items()})
    logs["lr"], logs["seconds"] = lr, seconds
    return logs


def history_row(logs: dict[str, float], counts: tuple[int, int], grad_norms: dict[str, float] | None) -> dict:
    """One history row: the epoch's logs, the trainable / non-trainable parameter counts and (when watched) the
    gradient norm of each weighted layer on the epoch's last batch."""
    row = {**logs, "trainable": counts[0], "non_trainable": counts[1]}
    if grad_norms is not None:
        row["grad_norms"] = grad_norms
    return row


def non_finite(epoch: int, logs: dict[str, float]) -> str | None:
    """The stop reason when the epoch's training or validation loss is not finite, else None."""
    if math.isfinite(logs.get("loss", 0.0)) and math.isfinite(logs.get("val_loss", 0.0)):
        return None
    return f"non-finite loss at epoch {epoch}"


class StopRule:
    """One run's stop-and-restore rule, epoch by epoch: a non-finite loss stops without early stopping seeing it;
    early stopping (when enabled) decides with :class:`~nntune.training.monitor.Patience`; the epoch kept is the
    best snapshot when it restores best weights and has taken one, else the last epoch trained."""

    def __init__(self, cfg: EarlyStoppingConfig | None) -> None:
        self.patience = Patience(cfg) if cfg is not None and cfg.enabled else None
        self.monitor = cfg.monitor if cfg is not None else "val_loss"
        self.restore = self.patience is not None and cfg.restore_best_weights
        self.snapped = False

    def update(self, epoch: int, logs: dict[str, float], value: float | None = None) -> tuple[bool, str | None]:
        """(snapshot the weights now, the stop reason or None) after ``epoch``; ``value`` is the monitored value
        (read from ``logs`` when None, a ConfigError when it is not logged)."""
        reason = non_finite(epoch, logs)
        if reason or self.patience is None:
            return False, reason
        snapshot, reason = self.patience.update(epoch, check_monitor(self.monitor, logs) if value is None else value)
        snapshot = snapshot and self.restore
        self.snapped = self.snapped or snapshot
        return snapshot, reason

    def kept_epoch(self, last: int) -> int:
        """The epoch whose weights the run ends with, when ``last`` is the last epoch trained."""
        return self.patience.best_epoch if self.snapped else last
