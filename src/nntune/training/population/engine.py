"""The population engine: K members of one architecture trained at once, as one stacked ("wide") model.

Why an engine of our own: a small model's training step is a few dozen tiny kernels, so training one model at a
time leaves a GPU idle. Stacking K members turns every layer into one batched kernel: a linear layer becomes one
``baddbmm`` over (K, B, F), a convolution one grouped convolution (groups=K) over (B, K·C, ...), batch norm runs over
K·C channels (each member keeps its own statistics) and one fused optimizer step updates all K with per-member
hyper-parameters. This rewrite is exact: a member follows the arithmetic of the same model trained alone by
:class:`~nntune.training.single.Trainer` (the tests compare weights and histories in float64), which
``torch.func.vmap`` cannot promise for batch norm's running statistics.

Members share the structure (everything but :data:`~nntune.training.population.structure.MEMBER_KEYS`) and differ in
LR, weight decay, momentum, dropout rates, label smoothing, gradient clipping, schedule parameters, augmentation
strength, epochs, early stopping and the seed (initial weights and data order; every member sees its own shuffle).
Each member gets the same history rows, early stopping, callbacks (Optuna pruning) and :class:`FitResult` as a
single ``Trainer.fit``; a member that stops keeps its best weights and leaves the population, so it stops costing
compute.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from nntune.config import TrainConfig
from nntune.errors import SpecError
from nntune.models.inspect import parameter_counts
from nntune.training.callbacks import Callback, StopRequest, batch_callbacks
from nntune.training.device import matmul_precision, resolve_device, resolve_precision, set_threads
from nntune.training.epoch import BatchPlan, FitResult, StopRule, epoch_logs, history_row, non_finite
from nntune.training.metrics import add_halves, member_losses, member_metrics, metric_name, metric_sum, outputs
from nntune.training.population.member_lrs import MemberLRs
from nntune.training.population.optimizers import MemberwiseOptimizer, StackedOptimizer, make_optimizer
from nntune.training.population.stacked_model import StackedModel, bcast, per_member
from nntune.training.resume import RunState


class MemberHandle(StopRequest):
    """What a callback sees as ``trainer`` for one member: it can stop the member and read its model and history."""

    def __init__(self, population: PopulationTrainer, member: int) -> None:
        self._pop, self.member = population, member
        self.cfg = population.cfgs[member]
        self.epochs = self.cfg.epochs
        self.task, self.metric_name = population.task, population.metric_name
        self.history: list[dict] = []

    @property
    def model(self) -> nn.Module:
        """This member as an ordinary module holding its current weights (built on demand)."""
        return self._pop.current_model(self.member)

    def state(self) -> RunState:
        """This member's state after its last epoch, to continue it alone elsewhere (from an epoch-end callback)."""
        return self._pop.member_run_state(self.member, self.history)


class PopulationTrainer:
    """Trains K same-structure members at once; ``fit`` returns one :class:`FitResult` per member and leaves each
    member's final weights (its best, when early stopping restores them) in ``members[i]``."""

    stacked_optimizer: bool | None = None  # None: stacked kernels on a GPU, member by member elsewhere

    def __init__(
        self,
        template: nn.Module,
        members: Sequence[nn.Module],
        task: str,
        cfgs: Sequence[TrainConfig],
        callbacks: Sequence[Sequence[Callback]] | None = None,
        transforms: Sequence[Callable[[torch.Tensor], torch.Tensor]] | None = None,
        seeds: Sequence[int] | None = None,
        grad_stats: bool = True,
        val_halves: bool = False,
    ) -> None:
        if not members or len(cfgs) != len(members):
            raise SpecError(f"population: {len(members)} members but {len(cfgs)} training configs")
        self.cfgs = list(cfgs)
        ref = self.cfgs[0]
        for key in ("batch_size", "optimizer", "nesterov", "device", "threads", "precision"):
            values = {getattr(c, key) for c in self.cfgs}
            if len(values) > 1:
                raise SpecError(f"population: train.{key} must be the same for every member, got {sorted(values)}")
        if len({c.schedule.name for c in self.cfgs}) > 1:
            raise SpecError("population: train.schedule.name must be the same for every member")
        set_threads(ref.threads)
        self.device = resolve_device(ref.device)
        self.amp = resolve_precision(ref.precision, self.device)
        if self.amp == torch.float16:
            raise SpecError("population: train.precision fp16 needs loss scaling, which populations do not do; use "
                            "bf16 or auto, or train one model at a time (--population 1)")
        self.template, self.members = template, list(members)
        self.task = task
        self.classification = task == "classification"
        self.metric_name = metric_name(task)
        self.callbacks = [list(cbs) for cbs in callbacks] if callbacks else [[] for _ in members]
        self.transforms = list(transforms) if transforms else None
        self.seeds = list(seeds) if seeds is not None else [0] * len(members)
        self.grad_stats = grad_stats
        self.val_halves = val_halves  # also log validation metrics per half (see metrics.add_halves)
        self.model: StackedModel | None = None
        self._clipping = False
        self._slots: list[int] = []
        self._finals: dict[int, dict[str, torch.Tensor]] = {}
        self._vectors: dict[str, torch.Tensor] = {}  # per-member values that follow compaction
        self._run: tuple | None = None  # the running fit's (optimizer, best-weights snapshot, stop rules)

    def current_model(self, member: int) -> nn.Module:
        """Member ``member`` with its current weights (its final ones once it has left the population)."""
        if member in self._finals:
            self.members[member].load_state_dict(self._finals[member])
        elif self.model is not None and member in self._slots:
            self.members[member].load_state_dict(self.model.member_state(self._slots.index(member)))
        return self.members[member]

    def member_run_state(self, member: int, history: list[dict]) -> RunState:
        """A training member's weights, best-weights snapshot and optimizer moments with its history."""
        model, (optimizer, best, rules) = self.model, self._run
        slot = self._slots.index(member)
        snap = model.member_state(slot, best) if rules[member].snapped else None
        moments, steps = optimizer.member_moments(slot)
        return RunState([dict(row) for row in history], model.member_state(slot), snap, moments, steps)

    @torch.no_grad()
    def _evaluate(self, x: torch.Tensor, y: torch.Tensor, smoothing: torch.Tensor) -> list[dict[str, float]]:
        """Validation metrics of every active member on one shared batch set (float32, as ``compute_metrics``)."""
        model = self.model
        chunk = max(self.cfgs[0].batch_size, 2048 // max(1, model.K))
        outs = torch.cat([outputs(model.forward(x[i:i + chunk], train=False, shared=True), self.classification)
                          .float() for i in range(0, len(x), chunk)], dim=1)
        rows = member_metrics(outs, y, self.classification, smoothing)
        if self.val_halves:
            add_halves(rows, lambda half: member_metrics(outs[:, half], y[half], self.classification, smoothing))
        return rows

    # ---- the loop ---------------------------------------------------------------------------------------------
    def fit(self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
            catch_interrupt: bool = False) -> list[FitResult]:
        """Train every member for up to its ``epochs``, validating after each; one FitResult per member."""
        K = len(self.members)
        torch.manual_seed(self.seeds[0])
        gens = [torch.Generator().manual_seed(s) for s in self.seeds]
        dev = self.device
        x_train, y_train, x_val, y_val = (t.to(dev) for t in (x_train, y_train, x_val, y_val))
        plan = BatchPlan.of(len(x_train), self.cfgs[0].batch_size)
        model, optimizer, lrs = self._start(plan.steps)
        like = model.tensors[model.trainable[0]]
        rules = [StopRule(c.early_stopping) for c in self.cfgs]
        best = {k: v.detach().clone() for k, v in model.tensors.items()} if any(r.restore for r in rules) else None
        counts = [parameter_counts(member) for member in self.members]
        handles = [MemberHandle(self, m) for m in range(K)]
        per_step = [batch_callbacks(cbs) for cbs in self.callbacks]
        results = [FitResult() for _ in range(K)]
        self._finals = finals = {}
        self._slots = slots = list(range(K))
        self._run = (optimizer, best, rules)
        started = time.perf_counter()
        for m, row in enumerate(self._evaluate(x_val, y_val, self._vectors["smoothing"])):
            results[m].initial_val_loss = row["loss"]
        for m in range(K):
            for cb in self.callbacks[m]:
                cb.on_train_begin(handles[m])

        def finish(m: int, slot: int, reason: str | None, stopped_epoch: int) -> None:
            """Member ``m`` leaves: keep its final weights (the best snapshot when early stopping restores)."""
            finals[m] = model.member_state(slot, best if rules[m].snapped else None)
            r = results[m]
            r.history = handles[m].history
            r.stop_reason, r.stopped_epoch = reason or "max_epochs", stopped_epoch
            r.best_epoch = rules[m].kept_epoch(len(r.history))
            for cb in self.callbacks[m]:
                cb.on_train_end(handles[m])

        try:
            for epoch in range(1, max(c.epochs for c in self.cfgs) + 1):
                t0 = time.perf_counter()
                epoch_lrs = lrs.epoch_start()
                perms = torch.stack([plan.order(gens[m]) for m in slots]).to(dev)
                sums = torch.zeros(2, len(slots), device=dev, dtype=like.dtype)
                grad_norms = None
                seen = 0
                for start in plan.starts():
                    idx = perms[:, start:start + plan.size]
                    xb, yb = x_train[idx], y_train[idx]
                    if self.transforms is not None:
                        xb = self._transform(xb, slots)
                    last = self.grad_stats and plan.is_last(start)
                    out, losses, norms = self._step(model, optimizer, lrs, xb, yb, last)
                    grad_norms = norms if last else grad_norms
                    with torch.no_grad():
                        sums[0] += losses.detach() * idx.shape[1]
                        sums[1] += metric_sum(out.detach(), yb, self.classification)
                    seen += idx.shape[1]
                    if any(per_step[m] for m in slots):
                        for m in slots:
                            for cb in per_step[m]:
                                cb.on_batch_end(handles[m])
                        if all(handles[m].stop_requested for m in slots):  # a deadline: the epoch ends here
                            break
                train = (sums / seen).tolist()
                val = self._evaluate(x_val, y_val, self._vectors["smoothing"])
                norms = grad_norms.T.tolist() if grad_norms is not None else None
                seconds = (time.perf_counter() - t0) / len(slots)  # this epoch's wall time, shared by the members
                monitored: dict[int, float] = {}
                leaving: list[tuple[int, str | None, int]] = []
                snap_slots = []
                for i, m in enumerate(slots):
                    h = handles[m]
                    logs = epoch_logs(epoch, (train[0][i], train[1][i]), self.metric_name, val[i], epoch_lrs[i],
                                      seconds)
                    shown = None if norms is None else dict(
                        zip(model.weighted, norms[i]))
                    h.history.append(history_row(logs, counts[m], shown))
                    reason = non_finite(epoch, logs)
                    if reason:  # the member stops; early stopping and callbacks do not see the epoch
                        leaving.append((m, reason, epoch))
                        continue
                    monitored[m] = logs.get(self.cfgs[m].early_stopping.monitor, logs["val_loss"])
                    snapshot, reason = rules[m].update(epoch, logs)
                    if snapshot:
                        snap_slots.append(i)
                    if reason:
                        h.stop(reason)
                    for cb in self.callbacks[m]:
                        cb.on_epoch_end(h, epoch, logs)
                if snap_slots:
                    sel = torch.tensor(snap_slots, device=dev)
                    for k, v in model.tensors.items():
                        best[k].index_copy_(0, sel, v.detach()[sel])
                for m in monitored:  # every member has logged this epoch: decisions that compare them
                    h = handles[m]
                    for cb in self.callbacks[m]:
                        cb.on_epochs_logged(h, epoch)
                    if h.stop_requested:
                        leaving.append((m, h.stop_reason, epoch))
                    elif epoch >= self.cfgs[m].epochs:
                        leaving.append((m, None, 0))
                lrs.after_epoch(monitored)
                if leaving:
                    for m, reason, stopped in leaving:
                        finish(m, slots.index(m), reason, stopped)
                    gone = {m for m, _, _ in leaving}
                    kept = [i for i, m in enumerate(slots) if m not in gone]
                    if not kept:
                        break
                    slots = self._compact(kept, optimizer, lrs, best)
        except KeyboardInterrupt:
            if not catch_interrupt:
                raise
            for m in list(slots):
                if m not in finals:
                    finish(m, slots.index(m), "interrupted", len(handles[m].history))
        elapsed = time.perf_counter() - started
        for m, member in enumerate(self.members):
            member.load_state_dict(finals[m])
            member.to(dev)
            results[m].seconds = sum(h["seconds"] for h in results[m].history) or elapsed / K
        self.model, self._slots = None, []
        return results

    def _start(self, steps: int) -> tuple[StackedModel, StackedOptimizer | MemberwiseOptimizer, MemberLRs]:
        """Stack the members on the device with their optimizer, LR schedules (``steps`` per epoch) and the
        per-member vectors the step uses: what ``fit`` and ``probe`` both start from."""
        self.model = model = StackedModel(self.template, self.members, self.device)
        like = model.tensors[model.trainable[0]]
        self._vectors = {"smoothing": per_member([c.label_smoothing for c in self.cfgs], like),
                         "clip": per_member([c.grad_clip or math.inf for c in self.cfgs], like)}
        self._clipping = any(c.grad_clip for c in self.cfgs)
        optimizer = make_optimizer(model, self.cfgs[0].optimizer, self.cfgs, self.stacked_optimizer)
        return model, optimizer, MemberLRs(self.cfgs, steps, like)

    def _step(self, model: StackedModel, optimizer, lrs: MemberLRs, xb: torch.Tensor, yb: torch.Tensor,
              grad_norms: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One training step of every active member: (outputs, (K,) losses, (layers, K) gradient norms or None)."""
        with matmul_precision(self.device, self.cfgs[0].precision):  # TF32 for the forward and the backward pass
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                out = outputs(model.forward(xb, train=True), self.classification)
            if self.amp is not None:  # losses and metrics in fp32, as the Trainer
                out = out.float()
            losses = member_losses(out, yb, self.classification, self._vectors["smoothing"])
            model.zero_grad()
            losses.sum().backward()  # members are independent: each gets the gradient of its own loss
            grads = [g for g in model.grads() if g is not None]
            norms = torch.stack([model.tensors[k].grad.flatten(1).norm(dim=1) for k in model.weighted.values()]) \
                if grad_norms else None
            if self._clipping:  # per member, over all its parameters, as clip_grad_norm_
                total = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)
                coef = (self._vectors["clip"] / (total + 1e-6)).clamp(max=1.0)
                for g in grads:
                    g.mul_(bcast(coef, g.dim()))
            optimizer.step(lrs.current(), lrs.momentum())
        lrs.after_batch()
        return out, losses, norms

    def probe(self, x_train: torch.Tensor, y_train: torch.Tensor, steps: int = 5,
              min_seconds: float = 0.2) -> tuple[float, int]:
        """(member-steps per second, peak bytes of GPU memory or 0) from the fastest of at least ``steps`` training
        steps (more until ``min_seconds`` of them, at most 50) after one warm-up step, on random batches: what
        :func:`choose_population_size` compares. The fastest step is the one least disturbed by other processes."""
        dev, K = self.device, len(self.members)
        x_train, y_train = x_train.to(dev), y_train.to(dev)
        cuda = dev.type == "cuda"
        if cuda:
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            before = torch.cuda.memory_allocated(dev)
        most = max(steps, 50)
        model, optimizer, lrs = self._start(most + 1)
        bs = min(self.cfgs[0].batch_size, len(x_train))
        gen = torch.Generator().manual_seed(0)
        times: list[float] = []
        while len(times) <= steps or (sum(times[1:]) < min_seconds and len(times) <= most):
            idx = torch.randint(0, len(x_train), (K, bs), generator=gen).to(dev)
            xb = x_train[idx]
            if self.transforms is not None:
                xb = self._transform(xb, list(range(K)))
            t0 = time.perf_counter()
            self._step(model, optimizer, lrs, xb, y_train[idx], self.grad_stats)
            if cuda:
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(dev) - before if cuda else 0
        self.model = None
        return K / min(times[1:]), peak

    def _compact(self, kept: list[int], optimizer: StackedOptimizer | MemberwiseOptimizer, lrs: MemberLRs,
                 best: dict[str, torch.Tensor] | None) -> list[int]:
        """Keep the population slots ``kept``; returns the members still training, by slot."""
        sel = torch.tensor(kept, device=self.device)
        self.model.keep(sel)
        optimizer.keep(sel)
        self._slots = [self._slots[i] for i in kept]
        lrs.keep(self._slots, sel)
        if best is not None:
            for k in best:
                best[k] = best[k][sel]
        self._vectors = {k: v[sel] for k, v in self._vectors.items()}
        return self._slots

    def _transform(self, xb: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """Per-member batch transforms (augmentation, then scaling); members sharing a transform share one call."""
        groups: dict[int, list[int]] = {}
        for i, m in enumerate(slots):
            groups.setdefault(id(self.transforms[m]), []).append(i)
        parts = []
        for rows in groups.values():
            fn = self.transforms[slots[rows[0]]]
            sub = xb[rows] if len(rows) < len(slots) else xb
            out = fn(sub.reshape(-1, *xb.shape[2:]))
            parts.append((rows, out.reshape(len(rows), xb.shape[1], *out.shape[1:])))
        if len(parts) == 1:
            return parts[0][1]
        result = torch.empty((len(slots), xb.shape[1], *parts[0][1].shape[2:]), dtype=parts[0][1].dtype,
                             device=xb.device)
        for rows, out in parts:
            result[rows] = out
        return result
