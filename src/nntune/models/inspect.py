"""Trainable vs non-trainable (seed topic 1): a per-layer summary and freezing by name pattern.

Counting follows Keras: trainable = parameters that get gradients; non-trainable = frozen parameters plus
floating-point state buffers (batch-norm running mean and variance; the integer ``num_batches_tracked`` is not a
weight and is not counted).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from nntune.errors import ConfigError


@dataclass
class LayerRow:
    name: str
    type: str
    output_shape: list[int]
    trainable: int
    non_trainable: int


@dataclass
class Summary:
    layers: list[LayerRow]
    trainable: int
    non_trainable: int
    param_mb: float
    activation_mb: float

    @property
    def total(self) -> int:
        return self.trainable + self.non_trainable

    def to_dict(self) -> dict:
        return {
            "total": self.total, "trainable": self.trainable, "non_trainable": self.non_trainable,
            "param_mb": self.param_mb, "activation_mb": self.activation_mb,
            "layers": [asdict(r) for r in self.layers],
        }


def _own_counts(module: nn.Module) -> tuple[int, int, int]:
    """(trainable, non-trainable, bytes) of a module's own parameters and floating buffers."""
    trainable = frozen = nbytes = 0
    for p in module.parameters(recurse=False):
        nbytes += p.numel() * p.element_size()
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    for b in module.buffers(recurse=False):
        if b.is_floating_point():
            frozen += b.numel()
            nbytes += b.numel() * b.element_size()
    return trainable, frozen, nbytes


def summary(model: nn.Module, input_shape: Sequence[int]) -> Summary:
    """Run one dummy sample through ``model`` and tabulate every layer that owns weights or changes the shape."""
    shapes: dict[str, list[int]] = {}
    act_bytes = 0
    names = {m: n for n, m in model.named_modules() if n}

    def hook(module: nn.Module, _inp: object, out: object) -> None:
        nonlocal act_bytes
        if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):  # a GRU/LSTM: (outputs, state)
            out = out[0]
        if isinstance(out, torch.Tensor):
            shapes[names[module]] = [-1, *out.shape[1:]]
            act_bytes += out[0].numel() * out.element_size()

    leaves = [m for m in names if not list(m.children()) or any(True for _ in m.parameters(recurse=False))]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    rows, total_t, total_n, total_bytes = [], 0, 0, 0
    for module in leaves:
        t, n, nbytes = _own_counts(module)
        total_t, total_n, total_bytes = total_t + t, total_n + n, total_bytes + nbytes
        rows.append(LayerRow(names[module], type(module).__name__, shapes.get(names[module], []), t, n))
    return Summary(rows, total_t, total_n, round(total_bytes / 2**20, 4), round(act_bytes / 2**20, 4))


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, non-trainable) as Keras counts them: frozen parameters and floating buffers are non-trainable."""
    trainable = frozen = 0
    for module in model.modules():
        t, f, _ = _own_counts(module)
        trainable, frozen = trainable + t, frozen + f
    return trainable, frozen


def _layers_with_params(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]


WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.RNNBase)


def layer_groups(model: nn.Module) -> list[list[tuple[str, nn.Module]]]:
    """The units freezing counts, input to output: each weighted layer (Linear, Conv, GRU/LSTM) with the layers that
    have parameters after it up to the next weighted one (its batch norm), so a layer and its normalization freeze,
    unfreeze and get a learning rate together."""
    groups: list[list[tuple[str, nn.Module]]] = []
    for name, module in _layers_with_params(model):
        if isinstance(module, WEIGHTED) or not groups:
            groups.append([])
        groups[-1].append((name, module))
    return groups


def _select(model: nn.Module, pattern: str | None, all_but_last: int | None) -> list[tuple[str, nn.Module]]:
    layers = _layers_with_params(model)
    if (pattern is None) == (all_but_last is None):
        raise ConfigError("freeze: give exactly one of a name pattern or all_but_last=N")
    if all_but_last is not None:
        if all_but_last < 0:
            raise ConfigError(f"freeze: all_but_last must be >= 0, got {all_but_last}")
        groups = layer_groups(model)
        return [layer for group in groups[: max(0, len(groups) - all_but_last)] for layer in group]
    chosen = [(n, m) for n, m in layers if fnmatch.fnmatchcase(n, pattern)]
    if not chosen:
        names = ", ".join(n for n, _ in layers)
        raise ConfigError(f"freeze: pattern {pattern!r} matches no layer with weights (layers: {names})")
    return chosen


def freeze(model: nn.Module, pattern: str | None = None, all_but_last: int | None = None) -> list[str]:
    """Stop gradients for layers whose name matches the glob ``pattern``, or all but the last N weighted layers (each
    with its batch norm, see :func:`layer_groups`).

    Returns the frozen layer names.
    """
    chosen = _select(model, pattern, all_but_last)
    for _, m in chosen:
        for p in m.parameters(recurse=False):
            p.requires_grad_(False)
    return [n for n, _ in chosen]


def unfreeze(model: nn.Module, pattern: str | None = "*", last: int | None = None) -> list[str]:
    """Give gradients back to layers matching ``pattern`` (all by default), or to the last N weighted layers.

    Returns the unfrozen layer names.
    """
    if last is not None:
        if last < 0:
            raise ConfigError(f"unfreeze: last must be >= 0, got {last}")
        groups = layer_groups(model)
        chosen = [layer for group in groups[len(groups) - min(last, len(groups)):] for layer in group]
    else:
        chosen = _select(model, pattern, None)
    for _, m in chosen:
        for p in m.parameters(recurse=False):
            p.requires_grad_(True)
    return [n for n, _ in chosen]


def frozen_layers(model: nn.Module) -> list[str]:
    """Names of weighted layers whose parameters are all frozen."""
    return [n for n, m in _layers_with_params(model) if not any(p.requires_grad for p in m.parameters(recurse=False))]


def weighted_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, weight) of every Linear/Conv layer, input to output, and the first recurrent matrix of a GRU/LSTM (where
    gradients explode through time): the layers gradient diagnostics watch."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d)
    return [(n, m.weight if isinstance(m, kinds) else m.weight_hh_l0) for n, m in model.named_modules()
            if isinstance(m, (*kinds, nn.RNNBase))]
