"""The single-model training loop every run uses; correct first, and as fast as a hand-written loop.

Data stays in memory as tensors on the training device; a batch is an index slice of a seeded permutation, never a
per-sample ``Dataset.__getitem__``. Losses and metrics accumulate on the device and are read back once per epoch
(one host sync), gradient norms are taken on the epoch's last batch only, and evaluation runs under
``torch.inference_mode()``. What an epoch means (batch plan, history row, stop rule) is :mod:`nntune.training.epoch`,
shared with the population engine.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from nntune.config import TrainConfig
from nntune.errors import TrainingError
from nntune.models.builders import forward_batched
from nntune.models.inspect import parameter_counts, weighted_layers
from nntune.registry import OPTIMIZERS
from nntune.training.callbacks import Callback, StopRequest, batch_callbacks
from nntune.training.device import (compiled, matmul_precision, resolve_device, resolve_precision, set_threads,
                                    uses_channels_last)
from nntune.training.early_stopping import EarlyStopping
from nntune.training.epoch import BatchPlan, FitResult, epoch_logs, history_row, non_finite
from nntune.training.metrics import (add_halves, compute_metrics, make_loss, metric_name, metric_sum, model_metrics,
                                     outputs)
from nntune.training.monitor import monitor_mode
from nntune.training.resume import RunState, from_optimizer, into_optimizer
from nntune.training.schedules import Schedule


def build_optimizer(params: Sequence[nn.Parameter], cfg: TrainConfig, lr: float | None = None) -> torch.optim.Optimizer:
    """``cfg.optimizer`` (see :data:`nntune.registry.OPTIMIZERS`) with the config's weight decay and momentum."""
    lr = cfg.lr if lr is None else lr
    return OPTIMIZERS[cfg.optimizer].make(params, lr, cfg.weight_decay, cfg.momentum, cfg.nesterov)


class Trainer(StopRequest):
    """Fits a model on in-memory tensors with the optimizer, schedule and callbacks the config asks for."""

    def __init__(
        self,
        model: nn.Module,
        task: str,
        cfg: TrainConfig | None = None,
        callbacks: Sequence[Callback] = (),
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0,
        grad_stats: bool = True,
        param_groups: list[dict] | None = None,
        val_halves: bool = False,
    ) -> None:
        self.cfg = cfg or TrainConfig()
        self.val_halves = val_halves  # also log validation metrics per half (see metrics.add_halves)
        self.param_groups = param_groups
        set_threads(self.cfg.threads)
        self.device = resolve_device(self.cfg.device)
        self.model = model.to(self.device)
        self.task = task
        self.classification = task == "classification"
        self.metric_name = metric_name(task)
        self.loss_fn = make_loss(task, self.cfg.label_smoothing)
        self.callbacks = list(callbacks)
        self.augment = augment
        self.seed = seed
        self.grad_stats = grad_stats
        self.epochs = self.cfg.epochs
        self.history: list[dict] = []
        self._optimizer: torch.optim.Optimizer | None = None  # the running fit's, for state()

    def fit(self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
            catch_interrupt: bool = False, resume: RunState | None = None) -> FitResult:
        """Train for up to ``cfg.epochs`` epochs, validating after each; returns the history and stop reason.

        With ``catch_interrupt`` a Ctrl-C ends training cleanly (best weights restored) instead of raising; with
        ``resume`` training continues after that state's last epoch (:mod:`nntune.training.resume`).
        """
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        dev = self.device
        x_train, y_train = x_train.to(dev), y_train.to(dev)
        x_val, y_val = x_val.to(dev), y_val.to(dev)
        plan = BatchPlan.of(len(x_train), self.cfg.batch_size)
        # every parameter is in the optimizer: a frozen one gets no gradient, so it does not move (not even by weight
        # decay), and it trains once unfrozen (gradual unfreezing)
        groups = self.param_groups or [{"params": list(self.model.parameters())}]
        optimizer = build_optimizer(groups, self.cfg)
        plateau_mode = monitor_mode(self.cfg.early_stopping.monitor, self.cfg.early_stopping.mode)
        schedule = Schedule(optimizer, self.cfg.schedule, self.epochs, plan.steps, plateau_mode)
        watched = list(weighted_layers(self.model)) if self.grad_stats else []
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.history, self.stop_reason = [], None
        amp = resolve_precision(self.cfg.precision, dev)
        scaler = torch.amp.GradScaler(dev.type) if amp == torch.float16 else None
        channels_last = uses_channels_last(self.model, dev)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        step_model = compiled(self.model, dev) if self.cfg.compile else self.model
        result = FitResult()
        per_step = batch_callbacks(self.callbacks)
        started = time.perf_counter()
        result.initial_val_loss = self.evaluate(x_val, y_val)["loss"]
        self._optimizer = optimizer
        for cb in self.callbacks:
            cb.on_train_begin(self)
        if resume is not None:
            self._resume(resume, optimizer, schedule, plan, gen)
        try:
            with matmul_precision(dev, self.cfg.precision):
                for epoch in range(len(self.history) + 1, self.epochs + 1):
                    t0 = time.perf_counter()
                    lr = schedule.lr
                    self.model.train()
                    for m in norms:  # a frozen batch norm keeps its running statistics (as Keras runs it)
                        if not any(p.requires_grad for p in m.parameters()):
                            m.eval()
                    counts = parameter_counts(self.model)
                    perm = plan.order(gen).to(dev)
                    # two scalars: ``sums[i] += v`` on one tensor costs a select and a copy per batch
                    loss_sum = torch.zeros((), device=dev)
                    metric_total = torch.zeros((), device=dev)
                    grad_norms = None
                    seen = 0
                    for start in plan.starts():
                        idx = perm[start:start + plan.size]
                        xb, yb = x_train[idx], y_train[idx]
                        if self.augment is not None:
                            xb = self.augment(xb)
                        if channels_last:
                            xb = xb.contiguous(memory_format=torch.channels_last)
                        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                            out = outputs(step_model(xb), self.classification)
                        if amp is not None:  # loss and metrics in fp32
                            out = out.float()
                        loss = self.loss_fn(out, yb)
                        optimizer.zero_grad(set_to_none=True)
                        if scaler is not None:  # fp16: scaled loss, gradients unscaled before norms and clipping
                            scaler.scale(loss).backward()
                            scaler.unscale_(optimizer)
                        else:
                            loss.backward()
                        if watched and plan.is_last(start):
                            grad_norms = torch.stack([_grad_norm(p) for _, p in watched])
                        if self.cfg.grad_clip:
                            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
                        if scaler is not None:
                            scaler.step(optimizer)
                            scaler.update()
                        else:
                            optimizer.step()
                        schedule.after_batch()
                        with torch.no_grad():
                            loss_sum += loss.detach() * len(idx)
                            metric_total += metric_sum(out.detach(), yb, self.classification)
                        seen += len(idx)
                        if per_step:
                            for cb in per_step:
                                cb.on_batch_end(self)
                            if self.stop_requested:  # a deadline: this epoch ends on the batches done
                                break
                    train = (torch.stack([loss_sum, metric_total]) / seen).tolist()
                    logs = epoch_logs(epoch, train, self.metric_name, self._validate(x_val, y_val), lr,
                                      time.perf_counter() - t0)
                    shown = None if grad_norms is None else {
                        name: v for (name, p), v in zip(watched, grad_norms.tolist()) if p.requires_grad}
                    self.history.append(history_row(logs, counts, shown))
                    reason = non_finite(epoch, logs)
                    if reason:
                        self.stop(reason)
                        result.stopped_epoch = epoch
                        break
                    schedule.after_epoch(logs.get(self.cfg.early_stopping.monitor, logs["val_loss"]))
                    for cb in self.callbacks:
                        cb.on_epoch_end(self, epoch, logs)
                    for cb in self.callbacks:
                        cb.on_epochs_logged(self, epoch)
                    if self.stop_requested:
                        result.stopped_epoch = epoch
                        break
        except KeyboardInterrupt:
            if not catch_interrupt:
                raise
            self.stop("interrupted")
            result.stopped_epoch = len(self.history)
        finally:
            for cb in self.callbacks:
                cb.on_train_end(self)
        result.history = self.history
        result.stop_reason = self.stop_reason or "max_epochs"
        result.best_epoch = self._best_epoch()
        result.seconds = time.perf_counter() - started
        return result

    def _resume(self, state: RunState, optimizer: torch.optim.Optimizer, schedule: Schedule, plan: BatchPlan,
                gen: torch.Generator) -> None:
        """Continue from ``state``: its weights and moments; its epochs replayed through the schedule, early
        stopping and the data order, as they ran."""
        if state.epoch >= self.epochs:
            raise TrainingError(f"cannot continue after epoch {state.epoch}: this run trains {self.epochs} epochs")
        self.model.load_state_dict(state.weights)
        into_optimizer(self.model, optimizer, state)
        self.history = [dict(row) for row in state.history]
        monitor = self.cfg.early_stopping.monitor
        with warnings.catch_warnings():  # torch warns when a scheduler steps before its optimizer has
            warnings.filterwarnings("ignore", message="Detected call of")
            for row in self.history:
                plan.order(gen)
                for _ in range(plan.steps):
                    schedule.after_batch()
                schedule.after_epoch(row.get(monitor, row["val_loss"]))
        for cb in self.callbacks:
            if isinstance(cb, EarlyStopping):
                cb.replay(self.history, state.best)

    def state(self) -> RunState:
        """The run's state after its last epoch, to continue it elsewhere (call from an epoch-end callback)."""
        best = next((cb.best_weights for cb in self.callbacks if isinstance(cb, EarlyStopping)), None)
        moments, steps = from_optimizer(self.model, self._optimizer)
        weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return RunState([dict(row) for row in self.history], weights, best, moments, steps)

    def _best_epoch(self) -> int:
        """The epoch whose weights the model holds: early stopping's best when it restored them, else the last."""
        for cb in self.callbacks:
            if isinstance(cb, EarlyStopping) and cb.restored:
                return cb.best_epoch
        return len(self.history)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs (logits, or values for regression) for already-scaled inputs, on the CPU."""
        return outputs(forward_batched(self.model, x), self.classification)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Loss and metrics on already-scaled inputs: accuracy, or MAE and R² for regression."""
        return model_metrics(self.model, x, y, self.task, self.loss_fn)

    def _validate(self, x_val: torch.Tensor, y_val: torch.Tensor) -> dict[str, float]:
        """The epoch's validation metrics, with those of the split's halves when ``val_halves`` (one forward pass)."""
        if not self.val_halves:
            return self.evaluate(x_val, y_val)
        out, y = outputs(forward_batched(self.model, x_val), self.classification), y_val.cpu()
        rows = [compute_metrics(out, y, self.task, self.loss_fn)]
        add_halves(rows, lambda half: [compute_metrics(out[half], y[half], self.task, self.loss_fn)])
        return rows[0]


def _grad_norm(p: nn.Parameter) -> torch.Tensor:
    return p.grad.detach().norm() if p.grad is not None else torch.zeros((), device=p.device)
