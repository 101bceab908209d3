"""Each member's LR (and cycled momentum) schedule, exactly as the single-model loop's schedules drive them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nntune.config import TrainConfig
from nntune.registry import SCHEDULES
from nntune.training.monitor import monitor_mode
from nntune.training.population.stacked_model import per_member
from nntune.training.schedules import Schedule, replay


class MemberLRs:
    """Each member's LR schedule, exactly as :class:`~nntune.training.schedules.Schedule` drives torch's schedulers.

    Per-epoch schedules run one ``Schedule`` per member on a one-parameter optimizer (reduce-on-plateau needs the
    member's own metric). One-cycle steps every batch: its LRs (and the momentum it cycles, Adam's beta1) are
    replayed once per distinct schedule with a unit LR into a table (torch's schedules scale with the initial LR),
    so a step costs an index, not K Python calls.
    """

    def __init__(self, cfgs: Sequence[TrainConfig], steps: int, like: torch.Tensor) -> None:
        self.per_batch = SCHEDULES[cfgs[0].schedule.name].per_batch
        self.step = 0
        self.momenta: torch.Tensor | None = None  # (steps, K) when the schedule drives the momentum
        self.schedules: list[tuple[Schedule, torch.optim.Optimizer]] = []
        if self.per_batch:
            total = max(c.epochs for c in cfgs) * steps
            cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
            cols = []
            for c in cfgs:
                key = f"{c.schedule.model_dump_json()}|{c.epochs}"
                if key not in cache:
                    lr, mom = replay(c.schedule, 1.0, c.epochs, steps)
                    pad = total - len(lr)
                    cache[key] = (torch.tensor(lr + lr[-1:] * pad, dtype=like.dtype),
                                  torch.tensor(mom + mom[-1:] * pad, dtype=like.dtype))
                cols.append(cache[key])
            base = per_member([c.lr for c in cfgs], like)
            self.table = torch.stack([lr for lr, _ in cols], dim=1).to(like.device) * base
            self.momenta = torch.stack([m for _, m in cols], dim=1).to(like.device)
        else:
            for c in cfgs:
                opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=c.lr)
                mode = monitor_mode(c.early_stopping.monitor, c.early_stopping.mode)
                self.schedules.append((Schedule(opt, c.schedule, c.epochs, steps, mode), opt))
        self.slots = list(range(len(cfgs)))
        self._current = None if self.per_batch else self._from_schedules(like)  # per-epoch LRs of this epoch

    def _from_schedules(self, like: torch.Tensor) -> torch.Tensor:
        return per_member([self.schedules[m][0].lr for m in self.slots], like)

    def epoch_start(self) -> list[float]:
        """Every active member's LR at the start of this epoch (the history's ``lr``)."""
        return self.current().tolist()

    def current(self) -> torch.Tensor:
        """(K_active,) LRs for the next optimizer step."""
        return self.table[self.step] if self.per_batch else self._current

    def momentum(self) -> torch.Tensor | None:
        """(K_active,) momenta (Adam's beta1) the schedule sets for the next step, or None to keep the optimizer's."""
        return None if self.momenta is None else self.momenta[self.step]

    def after_batch(self) -> None:
        if self.per_batch and self.step < len(self.table) - 1:
            self.step += 1

    def after_epoch(self, metrics: dict[int, float]) -> None:
        """Step each active member's per-epoch schedule (``metrics``: member -> monitored value, for plateau)."""
        if self.per_batch:
            return
        for m in self.slots:
            if m in metrics:
                schedule, opt = self.schedules[m]
                opt.step()  # a no-op step (no gradients): torch wants the optimizer stepped before its scheduler
                schedule.after_epoch(metrics[m])
        self._current = self._from_schedules(self._current)

    def keep(self, members: list[int], slots: torch.Tensor) -> None:
        self.slots = members
        if self.per_batch:
            self.table = self.table[:, slots]
            self.momenta = self.momenta[:, slots]
        else:
            self._current = self._current[slots]
