"""The training loop every run and every trial uses; correct first, and as fast as a hand-written loop.

Data stays in memory as tensors on the training device; a batch is an index slice of a seeded permutation, never a
per-sample ``Dataset.__getitem__``. Losses and metrics accumulate on the device and are read back once per epoch
(one host sync), gradient norms are taken on the epoch's last batch only, and evaluation runs under
``torch.inference_mode()``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from nntune.config import TrainConfig
from nntune.errors import ConfigError
from nntune.models.builders import forward_batched
from nntune.models.inspect import parameter_counts
from nntune.training.callbacks import Callback, StopRequest, batch_callbacks
from nntune.training.early_stopping import EarlyStopping, monitor_mode
from nntune.training.schedules import Schedule


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an unusable device is a ConfigError naming it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: {name!r} asked for, but this machine has no usable CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device: {name!r} does not exist ({torch.cuda.device_count()} GPU(s))")
    elif device.type != "cpu":
        raise ConfigError(f"train.device: {name!r} is not supported (use auto, cpu, cuda or cuda:N)")
    return device


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``train.precision`` asks for on ``device``; None means plain fp32 (no autocast)."""
    if name == "fp32" or (name == "auto" and device.type != "cuda"):
        return None
    bf16_ok = device.type != "cuda" or torch.cuda.is_bf16_supported()
    if name == "auto":
        return torch.bfloat16 if bf16_ok else None
    if name == "bf16" and not bf16_ok:
        raise ConfigError(f"train.precision: bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16 "
                          "or auto")
    return torch.bfloat16 if name == "bf16" else torch.float16


@contextlib.contextmanager
def matmul_precision(device: torch.device, precision: str) -> Iterator[None]:
    """TF32 matmuls and convolutions on a CUDA GPU unless ``precision`` is strict fp32; restored afterwards."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision != "fp32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def uses_channels_last(model: nn.Module, device: torch.device) -> bool:
    """2-D convolutions on a CUDA GPU run faster in channels_last layout (tensor cores)."""
    return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def make_loss(task: str, label_smoothing: float = 0.0) -> nn.Module:
    """Cross-entropy (with optional label smoothing) for classification, MSE for regression."""
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing) if task == "classification" else nn.MSELoss()


@dataclass
class FitResult:
    """What happened during ``fit``: per-epoch history and why training ended."""

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


def build_optimizer(params: Sequence[nn.Parameter], cfg: TrainConfig, lr: float | None = None) -> torch.optim.Optimizer:
    """AdamW (default), Adam, SGD (momentum, optional Nesterov) or RMSprop, with weight decay."""
    lr = cfg.lr if lr is None else lr
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    return torch.optim.RMSprop(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def weighted_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, weight) of every Linear/Conv layer, input to output, and the first recurrent matrix of a GRU/LSTM (where
    gradients explode through time): the layers gradient diagnostics watch."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d)
    return [(n, m.weight if isinstance(m, kinds) else m.weight_hh_l0) for n, m in model.named_modules()
            if isinstance(m, (*kinds, nn.RNNBase))]


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
    ) -> None:
        self.cfg = cfg or TrainConfig()
        self.param_groups = param_groups
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.device = resolve_device(self.cfg.device)
        self.model = model.to(self.device)
        self.task = task
        self.classification = task == "classification"
        self.metric_name = "accuracy" if self.classification else "mae"
        self.loss_fn = make_loss(task, self.cfg.label_smoothing)
        self.callbacks = list(callbacks)
        self.augment = augment
        self.seed = seed
        self.grad_stats = grad_stats
        self.epochs = self.cfg.epochs
        self.history: list[dict] = []

    def _outputs(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.classification else out.reshape(-1)

    def _metric_sum(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.classification:
            return (out.argmax(1) == y).sum()
        return (out - y).abs().sum()

    def fit(self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
            catch_interrupt: bool = False) -> FitResult:
        """Train for up to ``cfg.epochs`` epochs, validating after each; returns the history and stop reason.

        With ``catch_interrupt`` a Ctrl-C ends training cleanly (best weights restored) instead of raising.
        """
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        dev = self.device
        x_train, y_train = x_train.to(dev), y_train.to(dev)
        x_val, y_val = x_val.to(dev), y_val.to(dev)
        n, bs = len(x_train), min(self.cfg.batch_size, len(x_train))
        # a trailing batch of one sample breaks batch norm; drop it (it is reshuffled next epoch)
        n_used = n - 1 if n % bs == 1 and n > 1 else n
        steps = math.ceil(n_used / bs)
        # every parameter is in the optimizer: a frozen one gets no gradient, so it does not move (not even by weight
        # decay), and it trains once unfrozen (gradual unfreezing)
        groups = self.param_groups or [{"params": list(self.model.parameters())}]
        optimizer = build_optimizer(groups, self.cfg)
        plateau_mode = monitor_mode(self.cfg.early_stopping.monitor, self.cfg.early_stopping.mode)
        schedule = Schedule(optimizer, self.cfg.schedule, self.epochs, steps, plateau_mode)
        watched = list(weighted_layers(self.model)) if self.grad_stats else []
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.history, self.stop_reason = [], None
        amp = resolve_precision(self.cfg.precision, dev)
        scaler = torch.amp.GradScaler(dev.type) if amp == torch.float16 else None
        channels_last = uses_channels_last(self.model, dev)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        step_model = _compiled(self.model, dev) if self.cfg.compile else self.model
        result = FitResult()
        per_step = batch_callbacks(self.callbacks)
        started = time.perf_counter()
        result.initial_val_loss = self.evaluate(x_val, y_val)["loss"]
        for cb in self.callbacks:
            cb.on_train_begin(self)
        try:
            with matmul_precision(dev, self.cfg.precision):
                for epoch in range(1, self.epochs + 1):
                    t0 = time.perf_counter()
                    lr = schedule.lr
                    self.model.train()
                    for m in norms:  # a frozen batch norm keeps its running statistics (as Keras runs it)
                        if not any(p.requires_grad for p in m.parameters()):
                            m.eval()
                    trainable, non_trainable = parameter_counts(self.model)
                    perm = torch.randperm(n, generator=gen)[:n_used].to(dev)
                    loss_sum = torch.zeros((), device=dev)
                    metric_sum = torch.zeros((), device=dev)
                    grad_norms = None
                    seen = 0
                    for start in range(0, n_used, bs):
                        idx = perm[start:start + bs]
                        xb, yb = x_train[idx], y_train[idx]
                        if self.augment is not None:
                            xb = self.augment(xb)
                        if channels_last:
                            xb = xb.contiguous(memory_format=torch.channels_last)
                        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                            out = self._outputs(step_model(xb))
                        if amp is not None:  # loss and metrics in fp32
                            out = out.float()
                        loss = self.loss_fn(out, yb)
                        optimizer.zero_grad(set_to_none=True)
                        if scaler is not None:  # fp16: scaled loss, gradients unscaled before norms and clipping
                            scaler.scale(loss).backward()
                            scaler.unscale_(optimizer)
                        else:
                            loss.backward()
                        if watched and start + bs >= n_used:
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
                            metric_sum += self._metric_sum(out.detach(), yb)
                        seen += len(idx)
                        if per_step:
                            for cb in per_step:
                                cb.on_batch_end(self)
                            if self.stop_requested:  # a deadline: this epoch ends on the batches done
                                break
                    train_loss, train_metric = (torch.stack([loss_sum, metric_sum]) / seen).tolist()
                    logs = {"epoch": epoch, "loss": train_loss, self.metric_name: train_metric}
                    logs.update({f"val_{k}": v for k, v in self.evaluate(x_val, y_val).items()})
                    logs["lr"] = lr
                    logs["seconds"] = time.perf_counter() - t0
                    row = {**logs, "trainable": trainable, "non_trainable": non_trainable}
                    if grad_norms is not None:
                        row["grad_norms"] = {name: v for (name, p), v in zip(watched, grad_norms.tolist())
                                             if p.requires_grad}
                    self.history.append(row)
                    if not (math.isfinite(logs["loss"]) and math.isfinite(logs["val_loss"])):
                        self.stop(f"non-finite loss at epoch {epoch}")
                        result.stopped_epoch = epoch
                        break
                    schedule.after_epoch(logs.get(self.cfg.early_stopping.monitor, logs["val_loss"]))
                    for cb in self.callbacks:
                        cb.on_epoch_end(self, epoch, logs)
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

    def _best_epoch(self) -> int:
        """The epoch whose weights the model holds: early stopping's best when it restored them, else the last."""
        for cb in self.callbacks:
            if isinstance(cb, EarlyStopping) and cb.restored:
                return cb.best_epoch
        return len(self.history)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs (logits, or values for regression) for already-scaled inputs, on the CPU."""
        return self._outputs(forward_batched(self.model, x))

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Loss and metrics on already-scaled inputs: accuracy, or MAE and R² for regression."""
        out = self.predict(x)
        return compute_metrics(out, y.cpu(), self.task, self.loss_fn)


def compute_metrics(out: torch.Tensor, y: torch.Tensor, task: str,
                    loss_fn: nn.Module | None = None) -> dict[str, float]:
    """Loss and metrics from outputs and targets (one host sync)."""
    out = out.float()
    if task == "classification":
        loss_fn = loss_fn or nn.CrossEntropyLoss()
        loss, acc = torch.stack([loss_fn(out, y), (out.argmax(1) == y).float().mean()]).tolist()
        return {"loss": loss, "accuracy": acc}
    err = out - y
    ss_tot = ((y - y.mean()) ** 2).sum()
    r2 = 1 - (err**2).sum() / ss_tot if ss_tot > 0 else torch.zeros((), device=out.device)
    loss, mae, r2 = torch.stack([(err**2).mean(), err.abs().mean(), r2]).tolist()
    return {"loss": loss, "mae": mae, "r2": r2}


def _compiled(model: nn.Module, device: torch.device) -> nn.Module:
    """``torch.compile`` of the model for training steps; on a GPU with CUDA graphs (``reduce-overhead``), which
    removes the per-kernel launch cost that dominates small models."""
    return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None)


def _grad_norm(p: nn.Parameter) -> torch.Tensor:
    return p.grad.detach().norm() if p.grad is not None else torch.zeros((), device=p.device)
