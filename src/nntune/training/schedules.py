"""LR schedules (seed topic 9), built on ``torch.optim.lr_scheduler``, with a linear warmup that composes with any.

Every schedule but one-cycle steps once per epoch (the LR of epoch ``e`` is the schedule's value at ``e``, counted
from 0); one-cycle steps once per batch as its authors intend. :func:`lr_values` replays a schedule on a dummy
optimizer so the report can plot exactly what training will use.
"""

from __future__ import annotations

import torch
from torch.optim import lr_scheduler as S

from nntune.config import ScheduleConfig
from nntune.errors import ConfigError
from nntune.registry import SCHEDULES


class Schedule:
    """Drives a torch scheduler at the right granularity: call :meth:`after_batch` and :meth:`after_epoch`."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, epochs: int, steps_per_epoch: int,
                 plateau_mode: str = "min") -> None:
        self.cfg = cfg
        self.per_batch = SCHEDULES[cfg.name].per_batch
        warmup = cfg.warmup_epochs
        if warmup >= epochs and cfg.name != "none":
            raise ConfigError(f"train.schedule.warmup_epochs: {warmup} leaves no epoch for the schedule "
                              f"(train.epochs={epochs})")
        unit = steps_per_epoch if self.per_batch else 1
        warm_steps, main_steps = warmup * unit, (epochs - warmup) * unit
        self.plateau: S.ReduceLROnPlateau | None = None
        self.warmup: S.LRScheduler | None = None
        self.scheduler: S.LRScheduler | None = None
        lr0 = optimizer.param_groups[0]["lr"]
        main = SCHEDULES[cfg.name].make(optimizer, cfg, main_steps, lr0, plateau_mode)
        if cfg.name == "plateau":
            self.plateau = main
            if warm_steps:
                self.warmup = S.LinearLR(optimizer, cfg.warmup_start_factor, 1.0, total_iters=warm_steps)
        elif warm_steps and main is not None:
            warm = S.LinearLR(optimizer, cfg.warmup_start_factor, 1.0, total_iters=warm_steps)
            self.scheduler = S.SequentialLR(optimizer, [warm, main], milestones=[warm_steps])
        elif warm_steps:
            self.scheduler = S.LinearLR(optimizer, cfg.warmup_start_factor, 1.0, total_iters=warm_steps)
        else:
            self.scheduler = main
        self._warm_left = warm_steps
        self._steps, self._total = 0, warm_steps + main_steps
        self._optimizer = optimizer

    @property
    def lr(self) -> float:
        """The LR of the last parameter group (the output layer's, when earlier groups get smaller ones)."""
        return self._optimizer.param_groups[-1]["lr"]

    def _step(self) -> None:
        if self.scheduler is not None:
            self.scheduler.step()

    def after_batch(self) -> None:
        # one-cycle has values for steps 0..total-1; never step past the end (torch raises there)
        if self.per_batch and self._steps < self._total - 1:
            self._steps += 1
            self._step()

    def after_epoch(self, metric: float | None = None) -> None:
        if self.per_batch:
            return
        if self.plateau is not None:
            if self._warm_left > 0:
                self.warmup.step()
                self._warm_left -= 1
            elif metric is not None:
                self.plateau.step(metric)
            return
        self._step()


def lr_values(cfg: ScheduleConfig, lr: float, epochs: int, steps_per_epoch: int = 1,
              metrics: list[float] | None = None) -> list[float]:
    """The LR at the start of every epoch (or every step for one-cycle), for plots and tests.

    ``metrics`` feeds reduce-on-plateau one monitored value per epoch.
    """
    return replay(cfg, lr, epochs, steps_per_epoch, metrics)[0]


def replay(cfg: ScheduleConfig, lr: float, epochs: int, steps_per_epoch: int = 1,
           metrics: list[float] | None = None) -> tuple[list[float], list[float]]:
    """(LRs, momenta) at the start of every epoch (every step for one-cycle). One-cycle also cycles the momentum
    (Adam's beta1), overriding the optimizer's; for other schedules the momentum column is the optimizer's own."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr, momentum=0.9)
    sched = Schedule(opt, cfg, epochs, steps_per_epoch)
    values, momenta = [], []
    for e in range(epochs):
        for _ in range(steps_per_epoch if sched.per_batch else 1):
            values.append(sched.lr)
            momenta.append(opt.param_groups[0]["momentum"])
            opt.step()
            if sched.per_batch:
                sched.after_batch()
        if not sched.per_batch:
            sched.after_epoch(metrics[e] if metrics else None)
    return values, momenta
