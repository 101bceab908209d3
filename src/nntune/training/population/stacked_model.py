"""The stacked ("wide") model: K members of one builder architecture as tensors ``(K, *shape)``, run as one.

A linear layer becomes one ``baddbmm`` over (K, F, B), a convolution one grouped convolution (groups=K) over
(B, K·C, ...), batch norm runs over K·C channels (each member keeps its own statistics), a GRU/LSTM one
block-diagonal recurrent layer (:mod:`~nntune.training.population.stacked_recurrent`): every layer is one batched
kernel whatever K is, and the arithmetic of each member is that of the same model run alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nntune.errors import SpecError
from nntune.models.builders import ConvBlock, Recurrent
from nntune.models.inspect import weighted_layers
from nntune.registry import ACTIVATIONS
from nntune.training.population.stacked_recurrent import StackedRecurrent

# every registered activation (and the identity) runs elementwise, the same on any layout
ACTIVATION_TYPES = (*{type(a.make(0.01)) for a in ACTIVATIONS.values()}, nn.Identity)
# per-channel layers without weights (pooling, a causal convolution's left padding): applied to (B, K·C, ...) as is
POOL_TYPES = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
              nn.ConstantPad1d)
Op = Callable[[torch.Tensor, bool], torch.Tensor]


def per_member(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """One value per member as a (K,) tensor of ``like``'s dtype and device."""
    return torch.tensor([float(v) for v in values], dtype=like.dtype, device=like.device)


def bcast(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """A (K,) tensor viewed to broadcast over a (K, ...) tensor of ``ndim`` dimensions."""
    return v.view(-1, *([1] * (ndim - 1)))


class StackedModel:
    """K members of one builder architecture as stacked tensors ``(K, *shape)`` under the members' state-dict keys.

    :meth:`forward` takes one batch per member ``(K, B, *input)`` (or one batch shared by all, for evaluation) and
    returns ``(K, B, outputs)``. Activations run in two layouts: ``(K, F, B)`` for dense layers (``W @ x``, so weight
    gradients need no transposed copy) and ``(B, K·C, ...)`` for convolutions, where a grouped convolution and
    K·C-channel batch norm keep the members apart.
    """

    def __init__(self, template: nn.Module, members: Sequence[nn.Module], device: torch.device) -> None:
        self.template = template
        ref = template.state_dict()
        states = [m.state_dict() for m in members]
        for i, st in enumerate(states):
            if list(st) != list(ref) or any(st[k].shape != ref[k].shape for k in ref):
                raise SpecError(f"population: member {i} does not have the template's layers and shapes")
        trainable = {n for n, p in template.named_parameters() if p.requires_grad}
        self.tensors: dict[str, torch.Tensor] = {}
        for key in ref:
            t = torch.stack([st[key].detach() for st in states]).to(device)
            self.tensors[key] = t.requires_grad_(True) if key in trainable else t
        self.trainable = [k for k in ref if k in trainable]
        self.rates: dict[str, torch.Tensor] = {}  # dropout layer name -> (K,) rates
        for name, mod in template.named_modules():
            if isinstance(mod, nn.modules.dropout._DropoutNd):
                found = [dict(m.named_modules()).get(name) for m in members]
                self.rates[name] = torch.tensor([f.p if f is not None else 0.0 for f in found],
                                                dtype=self.tensors[self.trainable[0]].dtype, device=device)
        self.K = len(members)
        keys = {id(p): k for k, p in template.named_parameters()}
        self.weighted = {n: keys[id(w)] for n, w in weighted_layers(template)}  # layer name -> its watched weight
        self._ops, layout = self._compile("", template, "input")
        if layout != "member":
            raise SpecError("population: the model must end with a linear layer")

    # ---- building the forward pass from the template's modules --------------------------------------------------
    def _compile(self, prefix: str, mod: nn.Module, layout: str) -> tuple[list[Op], str]:
        name = prefix.rstrip(".")
        if isinstance(mod, nn.Sequential):
            ops: list[Op] = []
            for child_name, child in mod.named_children():
                child_ops, layout = self._compile(f"{prefix}{child_name}.", child, layout)
                ops += child_ops
            return ops, layout
        if isinstance(mod, ConvBlock):
            return [self._conv_block(prefix, mod, layout)], "channel"
        if isinstance(mod, Recurrent):
            to_channel, rnn = self._to_channel(layout), StackedRecurrent(prefix, mod, self.tensors)
            return [lambda x, train: rnn(to_channel(x), train, self.K)], "member"
        if isinstance(mod, nn.Flatten):
            return [self._flatten(layout)], "member"
        if isinstance(mod, nn.Linear):
            if layout != "member":
                raise SpecError(f"population: linear layer {name} must follow a flatten")
            return [lambda x, train, n=name: self._linear(n, x)], "member"
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            to_channel = self._to_channel(layout)
            return [lambda x, train, n=name, m=mod: self._conv(n, m, to_channel(x))], "channel"
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if mod.momentum is None or not mod.track_running_stats or not mod.affine:
                raise SpecError(f"population: batch norm {name} needs momentum, affine and running statistics")
            return [lambda x, train, n=name, m=mod, lay=layout: self._batch_norm(n, m, x, train, lay)], layout
        if isinstance(mod, nn.modules.dropout._DropoutNd):
            spatial = isinstance(mod, (nn.Dropout1d, nn.Dropout2d))
            return [lambda x, train, n=name, lay=layout: self._dropout(n, x, train, lay, spatial)], layout
        if isinstance(mod, POOL_TYPES):
            to_channel = self._to_channel(layout)
            return [lambda x, train, m=mod: m(to_channel(x))], "channel"
        if isinstance(mod, ACTIVATION_TYPES):
            return [lambda x, train, m=mod: m(x)], layout
        raise SpecError(f"population: layer {name or '(model)'} of type {type(mod).__name__} is not supported")

    def _conv_block(self, prefix: str, block: ConvBlock, layout: str) -> Op:
        to_channel = self._to_channel(layout)
        body: list[Op] = []
        for n in block.body_names:
            ops, _ = self._compile(f"{prefix}{n}.", block._modules[n], "channel")
            body += ops
        shortcut = None
        if block.residual:
            shortcut, _ = self._compile(f"{prefix}shortcut.", block.shortcut, "channel")

        def run(x: torch.Tensor, train: bool) -> torch.Tensor:
            x = to_channel(x)
            y = x
            for op in body:
                y = op(y, train)
            if shortcut is None:
                return y
            s = x
            for op in shortcut:
                s = op(s, train)
            return block.act(y + s)

        return run

    def _to_channel(self, layout: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """Input batches to ``(B, K·C, ...)``: per-member ``(K, B, C, ...)`` or shared ``(B, C, ...)``."""
        if layout == "channel":
            return lambda x: x
        if layout != "input":
            raise SpecError("population: a convolution or pooling layer after a dense layer is not supported")

        def convert(x: torch.Tensor) -> torch.Tensor:
            if self._shared:
                return x.unsqueeze(1).expand(x.shape[0], self.K, *x.shape[1:]).reshape(
                    x.shape[0], self.K * x.shape[1], *x.shape[2:])
            return x.transpose(0, 1).reshape(x.shape[1], self.K * x.shape[2], *x.shape[3:])

        return convert

    def _flatten(self, layout: str) -> Op:
        def flatten(x: torch.Tensor, train: bool) -> torch.Tensor:
            if layout == "channel":  # (B, K·C, ...) -> (K, C·..., B)
                return x.reshape(x.shape[0], self.K, -1).permute(1, 2, 0)
            if self._shared:  # (B, ...) -> (K, F, B), the same batch for every member
                return x.reshape(x.shape[0], -1).t().unsqueeze(0).expand(self.K, -1, -1)
            return x.reshape(self.K, x.shape[1], -1).transpose(1, 2)

        return flatten

    def _linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """(K, in, B) -> (K, out, B) as W @ x + b: the weight gradient comes out in the weight's own layout."""
        w = self.tensors[f"{name}.weight"]
        b = self.tensors.get(f"{name}.bias")
        return torch.bmm(w, x) if b is None else torch.baddbmm(b.unsqueeze(2), w, x)

    def _conv(self, name: str, mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
        w = self.tensors[f"{name}.weight"]
        w = w.reshape(w.shape[0] * w.shape[1], *w.shape[2:])
        b = self.tensors.get(f"{name}.bias")
        conv = F.conv1d if isinstance(mod, nn.Conv1d) else F.conv2d
        return conv(x, w, None if b is None else b.reshape(-1), mod.stride, mod.padding, mod.dilation,
                    self.K * mod.groups)

    def _batch_norm(self, name: str, mod: nn.Module, x: torch.Tensor, train: bool, layout: str) -> torch.Tensor:
        t = self.tensors
        args = (t[f"{name}.running_mean"].view(-1), t[f"{name}.running_var"].view(-1),
                t[f"{name}.weight"].reshape(-1), t[f"{name}.bias"].reshape(-1), train, mod.momentum, mod.eps)
        if train:
            t[f"{name}.num_batches_tracked"].add_(1)
        if layout == "channel":
            return F.batch_norm(x, *args)
        k, f, b = x.shape  # (K, F, B) -> (1, K·F, B): each member's features are its own channels
        return F.batch_norm(x.reshape(1, k * f, b), *args).reshape(k, f, b)

    def _dropout(self, name: str, x: torch.Tensor, train: bool, layout: str, spatial: bool) -> torch.Tensor:
        if not train:
            return x
        keep = 1 - self.rates[name]
        if layout == "channel":  # (B, K·C, ...): a rate per channel group
            keep = keep.repeat_interleave(x.shape[1] // self.K).view(1, -1, *([1] * (x.dim() - 2)))
            shape = (*x.shape[:2], *([1] * (x.dim() - 2))) if spatial else x.shape
        else:  # (K, F, B)
            keep = bcast(keep, x.dim())
            shape = x.shape
        mask = torch.rand(shape, device=x.device, dtype=x.dtype) < keep
        return x * mask / keep

    # ---- running --------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, train: bool, shared: bool = False) -> torch.Tensor:
        """Outputs ``(K, B, n_out)`` for per-member batches ``(K, B, ...)`` or, with ``shared``, one batch ``(B, ...)``
        seen by every member."""
        self._shared = shared
        for op in self._ops:
            x = op(x, train)
        return x.transpose(1, 2)

    def grads(self) -> list[torch.Tensor]:
        return [self.tensors[k].grad for k in self.trainable]

    def zero_grad(self) -> None:
        for k in self.trainable:
            self.tensors[k].grad = None

    def keep(self, slots: torch.Tensor) -> None:
        """Keep only the members at ``slots`` (in that order): the others leave and stop costing compute."""
        for key, t in self.tensors.items():
            kept = t.detach()[slots].contiguous()
            self.tensors[key] = kept.requires_grad_(True) if key in self.trainable else kept
        self.rates = {k: v[slots] for k, v in self.rates.items()}
        self.K = len(slots)

    def member_state(self, slot: int, source: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """One member's state dict (from the live tensors, or from ``source`` such as a best-weights snapshot)."""
        source = source if source is not None else self.tensors
        return {k: v[slot].detach().clone() for k, v in source.items()}
