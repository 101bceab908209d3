"""LR range test (seed topic 5): Smith's test with three suggestions, leaving the model as it was.

The LR grows exponentially (or linearly) from ``start_lr`` to ``end_lr`` over ``steps`` mini-batches; the loss is
smoothed with a debiased exponential moving average and the test stops once it exceeds ``diverge`` times the best.
Suggestions: ``steepest`` (most negative slope of the smoothed loss against log LR; the default, because on digits
it trained better than ``valley`` in 5-20 epochs), ``valley`` (fastai's idea: a point in the middle of the longest
stretch of falling loss, more conservative) and ``min_div_10`` (the LR at the minimum divided by 10). Model weights,
device and train/eval mode, and any given optimizer's state, are restored afterwards.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from nntune.config import TrainConfig
from nntune.errors import ConfigError, TrainingError
from nntune.training.device import resolve_device
from nntune.training.metrics import make_loss
from nntune.training.single import build_optimizer

FLAT_DROP = 0.05   # smoothed loss falls by less than this fraction of its start: too flat to trust
NOISY = 0.5        # median |raw - smoothed| above this fraction of the drop: too noisy to trust


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]          # smoothed
    raw_losses: list[float]
    suggestions: dict[str, float]
    method: str = "steepest"
    warnings: list[str] = field(default_factory=list)

    @property
    def suggestion(self) -> float:
        return self.suggestions[self.method]

    def to_dict(self) -> dict:
        return {**asdict(self), "suggestion": self.suggestion}


def lr_find(model: nn.Module, task: str, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig | None = None,
            start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100, mode: str = "exp",
            smoothing: float = 0.98, diverge: float = 4.0, method: str = "steepest", seed: int = 0,
            optimizer: torch.optim.Optimizer | None = None) -> LRFindResult:
    """Run the range test on already-scaled training tensors; the model is left exactly as it was."""
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"lr_find: need 0 < start_lr < end_lr, got start_lr={start_lr}, end_lr={end_lr}")
    if steps < 10:
        raise ConfigError(f"lr_find: steps must be at least 10, got {steps}")
    if mode not in ("exp", "linear"):
        raise ConfigError(f"lr_find: mode must be 'exp' or 'linear', got {mode!r}")
    if method not in ("valley", "steepest", "min_div_10"):
        raise ConfigError(f"lr_find: unknown suggestion method {method!r}")
    cfg = cfg or TrainConfig()
    device = resolve_device(cfg.device)
    first = next(model.parameters(), None)
    home = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    saved_model = copy.deepcopy(model.state_dict())
    model.to(device)
    saved_opt = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    if optimizer is not None:  # its state (e.g. Adam's moments) must follow the parameters onto the test's device
        optimizer.load_state_dict(optimizer.state_dict())
    opt = optimizer or build_optimizer([p for p in model.parameters() if p.requires_grad], cfg, lr=start_lr)
    loss_fn = make_loss(task, cfg.label_smoothing)
    gen = torch.Generator().manual_seed(seed)
    bs = min(cfg.batch_size, len(x))
    x, y = x.to(device), y.to(device)
    lrs, raw, smooth = [], [], []
    avg, best = 0.0, math.inf
    perm, pos = torch.randperm(len(x), generator=gen), 0
    model.train()
    try:
        for i in range(steps):
            frac = i / (steps - 1)
            lr = start_lr * (end_lr / start_lr) ** frac if mode == "exp" else start_lr + (end_lr - start_lr) * frac
            for g in opt.param_groups:
                g["lr"] = lr
            if pos + bs > len(x):
                perm, pos = torch.randperm(len(x), generator=gen), 0
            idx = perm[pos:pos + bs].to(device)
            pos += bs
            out = model(x[idx])
            loss = loss_fn(out if task == "classification" else out.reshape(-1), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:  # the test runs the dynamics training will (recurrent models clip by default)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            value = loss.item()  # the test needs each loss to decide whether to stop
            if not math.isfinite(value):
                break
            avg = smoothing * avg + (1 - smoothing) * value
            smoothed = avg / (1 - smoothing ** (i + 1))
            lrs.append(lr)
            raw.append(value)
            smooth.append(smoothed)
            best = min(best, smoothed)
            if i > 0 and smoothed > diverge * best:
                break
    finally:
        model.to(home)
        model.load_state_dict(saved_model)
        model.train(was_training)
        if optimizer is not None:
            optimizer.load_state_dict(saved_opt)
    if len(lrs) < 5:
        raise TrainingError(f"lr_find: the loss diverged after {len(lrs)} steps from start_lr={start_lr}; "
                            "lower start_lr")
    return _analyse(lrs, raw, smooth, method)


def _analyse(lrs: list[float], raw: list[float], smooth: list[float], method: str) -> LRFindResult:
    lr_a, s = np.array(lrs), np.array(smooth)
    i_min = int(s.argmin())
    # steepest: ignore the noisy first points and everything after the minimum
    lo = min(len(s) // 10, max(i_min - 1, 0))
    hi = max(i_min + 1, lo + 2)
    grads = np.gradient(s[lo:hi], np.log10(lr_a[lo:hi])) if hi - lo >= 2 else np.array([0.0])
    i_steep = lo + int(grads.argmin())
    suggestions = {"steepest": float(lr_a[i_steep]), "valley": float(lr_a[_valley(s)]),
                   "min_div_10": float(lr_a[i_min] / 10)}
    warnings = []
    drop = s[: max(3, len(s) // 10)].max() - s[i_min]
    if drop < FLAT_DROP * abs(s[0]):
        warnings.append(f"the loss curve is too flat (it falls by {drop / max(abs(s[0]), 1e-12):.1%}); the "
                        "suggestion is unreliable: widen the LR range or check the model")
    noise = float(np.median(np.abs(np.array(raw) - s)))
    if drop > 0 and noise > NOISY * drop:
        warnings.append("the loss curve is too noisy to trust; use a larger batch or more steps")
    return LRFindResult(lrs, smooth, raw, suggestions, method, warnings)


def _valley(s: np.ndarray) -> int:
    """Point in the middle of the longest decreasing stretch: the longest decreasing subsequence, ending at its last
    point and as long as its count of points (noise in a flat start shortens it, moving the pick toward the drop)."""
    n = len(s)
    length = np.ones(n, dtype=int)
    for i in range(1, n):
        for j in range(i):
            if s[i] < s[j] and length[j] + 1 > length[i]:
                length[i] = length[j] + 1
    end = int(length.argmax())
    start = end - int(length[end]) + 1
    section = (end - start) / 3
    return min(n - 1, start + int(section) + int(section / 2))
