"""One registry per extension point: activations, optimizers, LR schedules, augmentation presets, model presets,
samplers, pruners and trackers.

The config's choices, the CLI's, the default search space, the population engine and the evidence all read these
tables, so a new activation or optimizer is one entry here (plus, for an optimizer, its update rule in the
population engine; the common-check tests fail until it is there). Entries are listed in the config's order;
``searched`` and ``evidence`` give their places in the default space's choices and in the evidence's comparisons.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


class _OnUse:
    """A module imported when one of its attributes is first used: the entries build torch objects when called,
    and the names alone (the config's and the CLI's choices) must not cost torch's import (``nntune --help``)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


torch = _OnUse("torch")
nn = _OnUse("torch.nn")
S = _OnUse("torch.optim.lr_scheduler")


@dataclass(frozen=True)
class Activation:
    """``make(leaky_slope)`` builds the module; ``init`` is the weight initialization that keeps it well scaled
    (kaiming for the ReLU family, xavier for saturating ones)."""

    make: Callable[[float], nn.Module]
    init: str  # kaiming_relu | kaiming_leaky | kaiming_linear | xavier_tanh | xavier
    searched: int | None  # its place in the default search space's choice (None: not searched)
    evidence: int | None = None  # its place in the evidence's comparison (None: not compared)


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation(lambda s: nn.ReLU(), "kaiming_relu", 0, evidence=0),
    "leaky_relu": Activation(lambda s: nn.LeakyReLU(s), "kaiming_leaky", 1, evidence=3),
    "elu": Activation(lambda s: nn.ELU(), "kaiming_relu", 2, evidence=4),
    "gelu": Activation(lambda s: nn.GELU(), "kaiming_relu", 3, evidence=1),
    "silu": Activation(lambda s: nn.SiLU(), "kaiming_relu", 4, evidence=2),
    "selu": Activation(lambda s: nn.SELU(), "kaiming_linear", None),
    "tanh": Activation(lambda s: nn.Tanh(), "xavier_tanh", 5, evidence=5),
    "sigmoid": Activation(lambda s: nn.Sigmoid(), "xavier", None),
}


@dataclass(frozen=True)
class Optimizer:
    """``make(params, lr, weight_decay, momentum, nesterov)`` builds the ``torch.optim`` optimizer of one model."""

    make: Callable[[Any, float, float, float, bool], torch.optim.Optimizer]
    searched: int | None  # its place in the default search space's choice (None: not searched)


OPTIMIZERS: dict[str, Optimizer] = {
    "adamw": Optimizer(lambda p, lr, wd, mom, nest: torch.optim.AdamW(p, lr=lr, weight_decay=wd), 0),
    "adam": Optimizer(lambda p, lr, wd, mom, nest: torch.optim.Adam(p, lr=lr, weight_decay=wd), None),
    "sgd": Optimizer(lambda p, lr, wd, mom, nest: torch.optim.SGD(p, lr=lr, momentum=mom, nesterov=nest and mom > 0,
                                                                  weight_decay=wd), 1),
    "rmsprop": Optimizer(lambda p, lr, wd, mom, nest: torch.optim.RMSprop(p, lr=lr, momentum=mom, weight_decay=wd),
                         None),
}


@dataclass(frozen=True)
class ScheduleKind:
    """An LR schedule: ``make(optimizer, cfg, steps, lr0, plateau_mode)`` builds torch's scheduler for the schedule
    config ``cfg`` over ``steps`` steps (None: a constant LR); :mod:`nntune.training.schedules` adds the warmup."""

    make: Callable[[torch.optim.Optimizer, Any, int, float, str], Any]
    evidence: int  # its place in the evidence's comparison
    searched: int | None = None  # its place in the default search space's choice (None: not searched)
    per_batch: bool = False  # steps every batch (else every epoch)


SCHEDULES: dict[str, ScheduleKind] = {
    "none": ScheduleKind(lambda opt, c, steps, lr0, mode: None, 0, searched=0),
    "exponential": ScheduleKind(lambda opt, c, steps, lr0, mode: S.ExponentialLR(opt, gamma=c.gamma), 4, searched=4),
    "step": ScheduleKind(lambda opt, c, steps, lr0, mode: S.StepLR(opt, step_size=c.step_size, gamma=c.gamma), 3,
                         searched=3),
    "multistep": ScheduleKind(lambda opt, c, steps, lr0, mode: S.MultiStepLR(opt, milestones=sorted(c.milestones),
                                                                             gamma=c.gamma), 6),
    "linear": ScheduleKind(lambda opt, c, steps, lr0, mode: S.LinearLR(opt, start_factor=1.0, end_factor=c.end_factor,
                                                                       total_iters=steps), 5),
    "polynomial": ScheduleKind(lambda opt, c, steps, lr0, mode: S.PolynomialLR(opt, total_iters=steps, power=c.power),
                               7),
    "cosine": ScheduleKind(lambda opt, c, steps, lr0, mode: S.CosineAnnealingLR(opt, T_max=steps,
                                                                                eta_min=c.min_lr_factor * lr0), 1,
                           searched=1),
    "cosine_restarts": ScheduleKind(lambda opt, c, steps, lr0, mode: S.CosineAnnealingWarmRestarts(
        opt, T_0=c.restart_period, T_mult=c.restart_mult, eta_min=c.min_lr_factor * lr0), 8),
    # each parameter group peaks at its own LR (discriminative LRs)
    "onecycle": ScheduleKind(lambda opt, c, steps, lr0, mode: S.OneCycleLR(
        opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=steps, pct_start=c.pct_start), 2, searched=2,
        per_batch=True),
    "plateau": ScheduleKind(lambda opt, c, steps, lr0, mode: S.ReduceLROnPlateau(
        opt, mode=mode, factor=c.plateau_factor, patience=c.plateau_patience), 9),
}

# augmentation presets per data kind: ops (see nntune.data.augment) with their parameters, scaled by the strength
AUGMENT_PRESETS: dict[str, dict[str, list[dict[str, Any]]]] = {
    "image": {
        "none": [],
        "light": [{"op": "affine", "degrees": 8.0, "translate": 0.05, "scale": 0.05, "shear": 0.0},
                  {"op": "noise", "std": 0.02}],
        "digits": [{"op": "affine"}, {"op": "erasing", "p": 0.3, "max_area": 0.1}],
        "natural": [{"op": "hflip"}, {"op": "crop"}, {"op": "jitter"}, {"op": "affine", "degrees": 10.0},
                    {"op": "erasing", "p": 0.25}],
    },
    "signal": {
        "none": [],
        "light": [{"op": "shift", "fraction": 0.05}, {"op": "noise", "std": 0.02}],
        "signal": [{"op": "shift"}, {"op": "amplitude"}, {"op": "noise"}],
        "digits": [{"op": "shift"}, {"op": "amplitude"}, {"op": "noise"}],
        "natural": [{"op": "shift"}, {"op": "amplitude"}, {"op": "noise"}],
    },
}


# named architectures (``model.preset``): model settings a preset fills in under the ones a config gives itself
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # a temporal-convolution network (Bai et al. 2018): residual blocks of two dilated convolutions, dilation doubling
    # per block (receptive field 1 + 2·2·(2⁵ - 1) = 125 steps), no pooling, global average pooling into the output
    "tcn": {"family": "cnn", "conv_blocks": 5, "convs_per_block": 2, "filters": 32, "filter_multiplier": 1.0,
            "kernel_size": 3, "dilation_growth": 2, "pool": "none", "residual": True, "batch_norm": True,
            "head": "gap", "fc_layers": 0},
    # a small ResNet (He et al. 2016; for signals, Wang et al. 2017's 1-D form): residual blocks of two convolutions
    # with batch norm, filters doubling per block, max pooling between blocks, global average pooling
    "resnet": {"family": "cnn", "conv_blocks": 3, "convs_per_block": 2, "filters": 32, "filter_multiplier": 2.0,
               "kernel_size": 3, "dilation_growth": 1, "pool": "max", "residual": True, "batch_norm": True,
               "head": "gap", "fc_layers": 0},
}


@dataclass(frozen=True)
class SamplerKind:
    """An Optuna sampler (built in :mod:`nntune.search.samplers`)."""

    multi_objective: bool  # whether it can search several objectives at once


SAMPLERS: dict[str, SamplerKind] = {
    "tpe": SamplerKind(True), "random": SamplerKind(True), "grid": SamplerKind(True), "gp": SamplerKind(False),
    "cmaes": SamplerKind(False), "nsga2": SamplerKind(True),
}
PRUNERS = ("median", "asha", "hyperband", "halving", "none")  # Optuna pruners and nntune.search.halving
TRACKERS = ("tensorboard", "mlflow")  # each is a module to import and the name of its nntune extra


def names(registry: Mapping[str, Any] | Iterable[str]) -> tuple[str, ...]:
    """The registered names, in the registry's order (what the config and the CLI accept)."""
    return tuple(registry)


def augment_presets() -> tuple[str, ...]:
    """Every augmentation preset name of any data kind, in first-seen order."""
    return tuple(dict.fromkeys(name for table in AUGMENT_PRESETS.values() for name in table))


def searched(registry: Mapping[str, Any]) -> list[str]:
    """The names the default search space chooses among, in its order."""
    return _ranked(registry, "searched")


def evidence_order(registry: Mapping[str, Any]) -> list[str]:
    """The names the evidence compares, in its order."""
    return _ranked(registry, "evidence")


def _ranked(registry: Mapping[str, Any], field: str) -> list[str]:
    ranked = [(getattr(entry, field), name) for name, entry in registry.items() if getattr(entry, field) is not None]
    return [name for _, name in sorted(ranked)]
