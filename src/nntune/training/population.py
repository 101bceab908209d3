"""Population training: K members of one architecture trained at once, as one stacked ("wide") model.

Why an engine of our own: a small model's training step is a few dozen tiny kernels, so training one model at a
time leaves a GPU idle. Stacking K members turns every layer into one batched kernel: a linear layer becomes one
``baddbmm`` over (K, B, F), a convolution one grouped convolution (groups=K) over (B, K·C, ...), batch norm runs over
K·C channels (each member keeps its own statistics) and one fused optimizer step updates all K with per-member
hyper-parameters. This rewrite is exact: a member follows the arithmetic of the same model trained alone by
:class:`~nntune.training.trainer.Trainer` (the tests compare weights and histories in float64), which
``torch.func.vmap`` cannot promise for batch norm's running statistics.

Members share the structure (everything but :data:`MEMBER_KEYS`) and differ in LR, weight decay, momentum, dropout
rates, label smoothing, gradient clipping, schedule parameters, augmentation strength, epochs, early stopping and the
seed (initial weights and data order; every member sees its own shuffle). Each member gets the same history rows,
early stopping, callbacks (Optuna pruning) and :class:`FitResult` as a single ``Trainer.fit``; a member that stops
keeps its best weights and leaves the population, so it stops costing compute.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nntune.config import RunConfig, TrainConfig
from nntune.errors import SpecError
from nntune.models.builders import ConvBlock
from nntune.models.inspect import parameter_counts
from nntune.training.callbacks import Callback, StopRequest, batch_callbacks
from nntune.training.early_stopping import Patience, check_monitor, monitor_mode
from nntune.training.schedules import Schedule, replay
from nntune.training.trainer import FitResult, matmul_precision, resolve_device, resolve_precision, weighted_layers

# dotted config keys that may differ between the members of one population; every other key is structure
MEMBER_KEYS = (
    "seed", "preprocess.augment_strength",
    "model.dropout", "model.dropout_after_pool", "model.dropout_before_fc", "model.dropout_after_fc",
    "train.epochs", "train.lr", "train.weight_decay", "train.momentum", "train.grad_clip", "train.label_smoothing",
    "train.schedule.warmup_epochs", "train.schedule.warmup_start_factor", "train.schedule.gamma",
    "train.schedule.step_size", "train.schedule.milestones", "train.schedule.end_factor", "train.schedule.power",
    "train.schedule.min_lr_factor", "train.schedule.restart_period", "train.schedule.restart_mult",
    "train.schedule.pct_start", "train.schedule.plateau_factor", "train.schedule.plateau_patience",
    "train.early_stopping.enabled", "train.early_stopping.monitor", "train.early_stopping.mode",
    "train.early_stopping.patience", "train.early_stopping.min_delta", "train.early_stopping.baseline",
    "train.early_stopping.start_from_epoch", "train.early_stopping.restore_best_weights",
)
DROPOUT_KEYS = tuple(k.split(".", 1)[1] for k in MEMBER_KEYS if k.startswith("model.dropout"))
ACTIVATION_TYPES = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.SELU, nn.Tanh, nn.Sigmoid, nn.Identity)
POOL_TYPES = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
Op = Callable[[torch.Tensor, bool], torch.Tensor]


def structure_key(cfg: RunConfig) -> str:
    """What members of one population must share: the config without :data:`MEMBER_KEYS` (and the search and evidence
    sections, which do not change how one model trains)."""
    import json

    data = cfg.to_dict()
    data.pop("search", None)
    data.pop("evidence", None)
    for key in MEMBER_KEYS:
        *path, last = key.split(".")
        node = data
        for part in path:
            node = node[part]
        node.pop(last, None)
    return json.dumps(data, sort_keys=True)


def check_same_structure(cfgs: Sequence[RunConfig]) -> None:
    """A SpecError naming the first key where a member's structure differs from member 0's."""
    keys = structure_key(cfgs[0])
    for i, cfg in enumerate(cfgs[1:], start=1):
        if structure_key(cfg) != keys:
            ref, other = _flat(cfgs[0].to_dict()), _flat(cfg.to_dict())
            diff = next((k for k in ref if ref[k] != other.get(k) and k not in MEMBER_KEYS
                         and not k.startswith(("search.", "evidence."))), "?")
            raise SpecError(f"population: member {i} differs from member 0 in {diff} ({other.get(diff)!r} vs "
                            f"{ref.get(diff)!r}); members may differ only in {', '.join(MEMBER_KEYS)}")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def union_model_config(cfgs: Sequence[RunConfig]):
    """Member 0's model config with every dropout rate at its largest over the members: a model with every dropout
    layer any member has (a member whose rate is 0 gets rate 0 in that layer, the identity)."""
    return cfgs[0].model.model_copy(update={k: max(getattr(c.model, k) for c in cfgs) for k in DROPOUT_KEYS})


def _per_member(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=like.dtype, device=like.device)


def _cross_entropy(out: torch.Tensor, y: torch.Tensor, smoothing: torch.Tensor) -> torch.Tensor:
    """(K, B) cross-entropy of logits ``(K, B, C)`` with each member's label smoothing, as ``nn.CrossEntropyLoss``:
    (1 - eps) * NLL + eps * mean over classes of -log p."""
    logp = out.log_softmax(-1)
    nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    eps = smoothing.view(-1, 1)
    return torch.where(eps > 0, (1 - eps) * nll - eps * logp.mean(-1), nll)


def _bcast(v: torch.Tensor, ndim: int) -> torch.Tensor:
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
        self.weighted = [f"{n}.weight" for n, _ in weighted_layers(template)]
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
            keep = _bcast(keep, x.dim())
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


class StackedOptimizer:
    """AdamW, Adam, SGD (momentum, Nesterov) and RMSprop over the stacked tensors with per-member LR, weight decay and
    momentum: the update rules of ``torch.optim`` (defaults: betas 0.9/0.999, eps 1e-8, RMSprop alpha 0.99), written
    as a dozen kernels over all members at once. The GPU path: few launches, whatever K is."""

    BETAS, EPS, ALPHA = (0.9, 0.999), 1e-8, 0.99

    def __init__(self, model: StackedModel, kind: str, weight_decay: Sequence[float], momentum: Sequence[float],
                 nesterov: Sequence[bool]) -> None:
        self.model, self.kind = model, kind
        like = model.tensors[model.trainable[0]]
        self.weight_decay, self.momentum = _per_member(weight_decay, like), _per_member(momentum, like)
        self.nesterov = torch.tensor(list(nesterov), device=like.device)
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        self.steps = 0

    @torch.no_grad()
    def step(self, lr: torch.Tensor, cycled: torch.Tensor | None = None) -> None:
        """One update with per-member ``lr``; ``cycled`` (K,) replaces the momentum (Adam's beta1) for this step, as
        one-cycle does."""
        self.steps += 1
        adam = self.kind in ("adamw", "adam")
        momentum = self.momentum if cycled is None else cycled
        if adam:
            beta1 = torch.full_like(lr, self.BETAS[0]) if cycled is None else cycled
            step_size = lr / (1 - beta1**self.steps)
        b2 = self.BETAS[1]
        for key in self.model.trainable:
            p = self.model.tensors[key]
            g = p.grad
            if g is None:
                continue
            lr_, wd, mom = (_bcast(v, p.dim()) for v in (lr, self.weight_decay, momentum))
            st = self.state.setdefault(key, {})
            if self.kind == "adamw":
                p.mul_(1 - lr_ * wd)
            else:
                g = g + wd * p
            if adam:
                if not st:
                    st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
                st["m"].lerp_(g, _bcast(1 - beta1, p.dim()))
                st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (st["v"].sqrt() / math.sqrt(1 - b2**self.steps)).add_(self.EPS)
                p.sub_(_bcast(step_size, p.dim()) * st["m"] / denom)
            elif self.kind == "sgd":
                if "buf" not in st:
                    st["buf"] = g.clone()
                else:
                    st["buf"].mul_(mom).add_(g)
                p.sub_(lr_ * torch.where(_bcast(self.nesterov, p.dim()), g + mom * st["buf"], st["buf"]))
            else:  # rmsprop
                if not st:
                    st["sq"], st["buf"] = torch.zeros_like(p), torch.zeros_like(p)
                st["sq"].mul_(self.ALPHA).addcmul_(g, g, value=1 - self.ALPHA)
                st["buf"].mul_(mom).add_(g / st["sq"].sqrt().add_(self.EPS))
                p.sub_(lr_ * st["buf"])

    def keep(self, slots: torch.Tensor) -> None:
        self.weight_decay, self.momentum, self.nesterov = (v[slots] for v in (self.weight_decay, self.momentum,
                                                                                self.nesterov))
        self.state = {k: {n: v[slots].contiguous() for n, v in st.items()} for k, st in self.state.items()}


class MemberwiseOptimizer:
    """The same optimizers as :class:`StackedOptimizer`, run member by member through ``torch.optim``'s functional
    API on views of the stacked tensors (fused kernels for AdamW, Adam and SGD). The CPU path: one fused pass over a
    member's parameters stays in cache, where a dozen passes over all K members' tensors do not (measured: 7x faster
    at K=32 on 2 cores)."""

    BETAS, EPS, ALPHA = StackedOptimizer.BETAS, StackedOptimizer.EPS, StackedOptimizer.ALPHA

    def __init__(self, model: StackedModel, kind: str, weight_decay: Sequence[float], momentum: Sequence[float],
                 nesterov: Sequence[bool]) -> None:
        self.model, self.kind = model, kind
        self.weight_decay, self.momentum, self.nesterov = list(weight_decay), list(momentum), list(nesterov)
        self.fused = kind != "rmsprop"  # torch has no fused RMSprop
        self.state: list[dict[str, list]] = [{} for _ in self.weight_decay]

    @torch.no_grad()
    def step(self, lr: torch.Tensor, cycled: torch.Tensor | None = None) -> None:
        """One update with per-member ``lr``; ``cycled`` replaces the momentum (Adam's beta1) for this step."""
        from torch.optim import adam, adamw, rmsprop, sgd

        t = self.model.tensors
        keys = [k for k in self.model.trainable if t[k].grad is not None]
        lrs = lr.tolist()
        moms = self.momentum if cycled is None else cycled.tolist()
        for i, st in enumerate(self.state):
            params, grads = [t[k].detach()[i] for k in keys], [t[k].grad[i] for k in keys]
            if not st:
                steps = [torch.zeros((), dtype=torch.float32, device=p.device if self.fused else "cpu")
                         for p in params]
                st.update(steps=steps, a=[torch.zeros_like(p) for p in params],
                          b=[torch.zeros_like(p) for p in params], buf=[None] * len(params))
            wd, mom = self.weight_decay[i], moms[i]
            if self.kind in ("adamw", "adam"):
                fn = adamw.adamw if self.kind == "adamw" else adam.adam
                fn(params, grads, st["a"], st["b"], [], st["steps"], fused=True, amsgrad=False, beta1=mom if cycled
                   is not None else self.BETAS[0], beta2=self.BETAS[1], lr=lrs[i], weight_decay=wd, eps=self.EPS,
                   maximize=False)
            elif self.kind == "sgd":
                sgd.sgd(params, grads, st["buf"], fused=True, weight_decay=wd, momentum=mom, lr=lrs[i],
                        dampening=0.0, nesterov=self.nesterov[i], maximize=False)
            else:
                rmsprop.rmsprop(params, grads, st["a"], [], st["b"], st["steps"], foreach=False, lr=lrs[i],
                                alpha=self.ALPHA, eps=self.EPS, weight_decay=wd, momentum=mom, centered=False)

    def keep(self, slots: torch.Tensor) -> None:
        kept = slots.tolist()
        self.state = [self.state[i] for i in kept]
        self.weight_decay, self.momentum, self.nesterov = ([v[i] for i in kept] for v in (
            self.weight_decay, self.momentum, self.nesterov))


def make_optimizer(model: StackedModel, kind: str, cfgs: Sequence[TrainConfig], stacked: bool | None = None):
    """The population's optimizer: stacked kernels on a GPU, member by member elsewhere (``stacked`` forces one)."""
    like = model.tensors[model.trainable[0]]
    stacked = like.device.type == "cuda" if stacked is None else stacked
    cls = StackedOptimizer if stacked else MemberwiseOptimizer
    return cls(model, kind, [c.weight_decay for c in cfgs], [c.momentum for c in cfgs],
               [c.nesterov and c.momentum > 0 for c in cfgs])


class MemberLRs:
    """Each member's LR schedule, exactly as :class:`~nntune.training.schedules.Schedule` drives torch's schedulers.

    Per-epoch schedules run one ``Schedule`` per member on a one-parameter optimizer (reduce-on-plateau needs the
    member's own metric). One-cycle steps every batch: its LRs (and the momentum it cycles, Adam's beta1) are
    replayed once per distinct schedule with a unit LR into a table (torch's schedules scale with the initial LR),
    so a step costs an index, not K Python calls.
    """

    def __init__(self, cfgs: Sequence[TrainConfig], steps: int, like: torch.Tensor) -> None:
        self.per_batch = cfgs[0].schedule.name == "onecycle"
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
            base = _per_member([c.lr for c in cfgs], like)
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
        return _per_member([self.schedules[m][0].lr for m in self.slots], like)

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
        if ref.threads:
            torch.set_num_threads(ref.threads)
        self.device = resolve_device(ref.device)
        self.amp = resolve_precision(ref.precision, self.device)
        if self.amp == torch.float16:
            raise SpecError("population: train.precision fp16 needs loss scaling, which populations do not do; use "
                            "bf16 or auto, or train one model at a time (--population 1)")
        self.template, self.members = template, list(members)
        self.task = task
        self.classification = task == "classification"
        self.metric_name = "accuracy" if self.classification else "mae"
        self.callbacks = [list(cbs) for cbs in callbacks] if callbacks else [[] for _ in members]
        self.transforms = list(transforms) if transforms else None
        self.seeds = list(seeds) if seeds is not None else [0] * len(members)
        self.grad_stats = grad_stats
        self.model: StackedModel | None = None
        self._clipping = False
        self._slots: list[int] = []
        self._finals: dict[int, dict[str, torch.Tensor]] = {}
        self._vectors: dict[str, torch.Tensor] = {}  # per-member values that follow compaction

    def current_model(self, member: int) -> nn.Module:
        """Member ``member`` with its current weights (its final ones once it has left the population)."""
        if member in self._finals:
            self.members[member].load_state_dict(self._finals[member])
        elif self.model is not None and member in self._slots:
            self.members[member].load_state_dict(self.model.member_state(self._slots.index(member)))
        return self.members[member]

    # ---- per-member losses and metrics -----------------------------------------------------------------------
    def _losses(self, out: torch.Tensor, y: torch.Tensor, smoothing: torch.Tensor) -> torch.Tensor:
        """(K,) mean training losses: cross-entropy with each member's label smoothing, or MSE."""
        if not self.classification:
            return ((out - y) ** 2).mean(1)
        return _cross_entropy(out, y, smoothing).mean(1)

    def _metric_sums(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.classification:
            return (out.argmax(-1) == y).sum(1).to(out.dtype)
        return (out - y).abs().sum(1)

    def _outputs(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.classification else out.reshape(out.shape[0], out.shape[1])

    @torch.no_grad()
    def _evaluate(self, x: torch.Tensor, y: torch.Tensor, smoothing: torch.Tensor) -> list[dict[str, float]]:
        """Validation metrics of every active member on one shared batch set (float32, as ``compute_metrics``)."""
        model = self.model
        chunk = max(self.cfgs[0].batch_size, 2048 // max(1, model.K))
        outs = [self._outputs(model.forward(x[i:i + chunk], train=False, shared=True)).float()
                for i in range(0, len(x), chunk)]
        out = torch.cat(outs, dim=1)
        y = y.to(out.device)
        if self.classification:
            y_k = y.unsqueeze(0).expand(out.shape[0], -1)
            per = _cross_entropy(out, y_k, smoothing.float())
            rows = torch.stack([per.mean(1), (out.argmax(-1) == y_k).float().mean(1)], dim=1).tolist()
            return [{"loss": a, "accuracy": b} for a, b in rows]
        y = y.float()
        err = out - y
        ss_tot = ((y - y.mean()) ** 2).sum()
        r2 = 1 - (err**2).sum(1) / ss_tot if ss_tot > 0 else torch.zeros(out.shape[0], device=out.device)
        rows = torch.stack([(err**2).mean(1), err.abs().mean(1), r2], dim=1).tolist()
        return [{"loss": a, "mae": b, "r2": c} for a, b, c in rows]

    # ---- the loop ---------------------------------------------------------------------------------------------
    def fit(self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
            catch_interrupt: bool = False) -> list[FitResult]:
        """Train every member for up to its ``epochs``, validating after each; one FitResult per member."""
        K = len(self.members)
        torch.manual_seed(self.seeds[0])
        gens = [torch.Generator().manual_seed(s) for s in self.seeds]
        dev = self.device
        x_train, y_train, x_val, y_val = (t.to(dev) for t in (x_train, y_train, x_val, y_val))
        n, bs = len(x_train), min(self.cfgs[0].batch_size, len(x_train))
        n_used = n - 1 if n % bs == 1 and n > 1 else n  # as Trainer: no trailing batch of one sample
        steps = math.ceil(n_used / bs)
        model, optimizer, lrs = self._start(steps)
        like = model.tensors[model.trainable[0]]
        patience = [Patience(c.early_stopping) if c.early_stopping.enabled else None for c in self.cfgs]
        restore = [p is not None and c.early_stopping.restore_best_weights for p, c in zip(patience, self.cfgs)]
        best = {k: v.detach().clone() for k, v in model.tensors.items()} if any(restore) else None
        snapped = [False] * K
        counts = [parameter_counts(member) for member in self.members]
        handles = [MemberHandle(self, m) for m in range(K)]
        per_step = [batch_callbacks(cbs) for cbs in self.callbacks]
        results = [FitResult() for _ in range(K)]
        self._finals = finals = {}
        self._slots = slots = list(range(K))
        started = time.perf_counter()
        for m, row in enumerate(self._evaluate(x_val, y_val, self._vectors["smoothing"])):
            results[m].initial_val_loss = row["loss"]
        for m in range(K):
            for cb in self.callbacks[m]:
                cb.on_train_begin(handles[m])

        def finish(m: int, slot: int, reason: str | None, stopped_epoch: int) -> None:
            """Member ``m`` leaves: keep its final weights (the best snapshot when early stopping restores)."""
            use_best = restore[m] and snapped[m]
            finals[m] = model.member_state(slot, best if use_best else None)
            r = results[m]
            r.history = handles[m].history
            r.stop_reason, r.stopped_epoch = reason or "max_epochs", stopped_epoch
            r.best_epoch = patience[m].best_epoch if use_best else len(r.history)
            for cb in self.callbacks[m]:
                cb.on_train_end(handles[m])

        try:
            for epoch in range(1, max(c.epochs for c in self.cfgs) + 1):
                t0 = time.perf_counter()
                epoch_lrs = lrs.epoch_start()
                perms = torch.stack([torch.randperm(n, generator=gens[m])[:n_used] for m in slots]).to(dev)
                sums = torch.zeros(2, len(slots), device=dev, dtype=like.dtype)
                grad_norms = None
                seen = 0
                for start in range(0, n_used, bs):
                    idx = perms[:, start:start + bs]
                    xb, yb = x_train[idx], y_train[idx]
                    if self.transforms is not None:
                        xb = self._transform(xb, slots)
                    last = self.grad_stats and start + bs >= n_used
                    out, losses, norms = self._step(model, optimizer, lrs, xb, yb, last)
                    grad_norms = norms if last else grad_norms
                    with torch.no_grad():
                        sums[0] += losses.detach() * idx.shape[1]
                        sums[1] += self._metric_sums(out.detach(), yb)
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
                    logs = {"epoch": epoch, "loss": train[0][i], self.metric_name: train[1][i]}
                    logs.update({f"val_{k}": v for k, v in val[i].items()})
                    logs["lr"], logs["seconds"] = epoch_lrs[i], seconds
                    row = {**logs, "trainable": counts[m][0], "non_trainable": counts[m][1]}
                    if norms is not None:
                        row["grad_norms"] = dict(zip((k.removesuffix(".weight") for k in model.weighted), norms[i]))
                    h.history.append(row)
                    if not (math.isfinite(logs["loss"]) and math.isfinite(logs["val_loss"])):
                        leaving.append((m, f"non-finite loss at epoch {epoch}", epoch))
                        continue
                    es = self.cfgs[m].early_stopping
                    monitored[m] = logs.get(es.monitor, logs["val_loss"])
                    if patience[m] is not None:
                        snapshot, reason = patience[m].update(epoch, check_monitor(es.monitor, logs))
                        if snapshot and restore[m]:
                            snap_slots.append(i)
                            snapped[m] = True
                        if reason:
                            h.stop(reason)
                    for cb in self.callbacks[m]:
                        cb.on_epoch_end(h, epoch, logs)
                    if h.stop_requested:
                        leaving.append((m, h.stop_reason, epoch))
                    elif epoch >= self.cfgs[m].epochs:
                        leaving.append((m, None, 0))
                if snap_slots:
                    sel = torch.tensor(snap_slots, device=dev)
                    for k, v in model.tensors.items():
                        best[k].index_copy_(0, sel, v.detach()[sel])
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
        self._vectors = {"smoothing": _per_member([c.label_smoothing for c in self.cfgs], like),
                         "clip": _per_member([c.grad_clip or math.inf for c in self.cfgs], like)}
        self._clipping = any(c.grad_clip for c in self.cfgs)
        optimizer = make_optimizer(model, self.cfgs[0].optimizer, self.cfgs, self.stacked_optimizer)
        return model, optimizer, MemberLRs(self.cfgs, steps, like)

    def _step(self, model: StackedModel, optimizer, lrs: MemberLRs, xb: torch.Tensor, yb: torch.Tensor,
              grad_norms: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One training step of every active member: (outputs, (K,) losses, (layers, K) gradient norms or None)."""
        with matmul_precision(self.device, self.cfgs[0].precision):  # TF32 for the forward and the backward pass
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                out = self._outputs(model.forward(xb, train=True))
            if self.amp is not None:  # losses and metrics in fp32, as the Trainer
                out = out.float()
            losses = self._losses(out, yb, self._vectors["smoothing"])
            model.zero_grad()
            losses.sum().backward()  # members are independent: each gets the gradient of its own loss
            grads = [g for g in model.grads() if g is not None]
            norms = torch.stack([model.tensors[k].grad.flatten(1).norm(dim=1) for k in model.weighted]) \
                if grad_norms else None
            if self._clipping:  # per member, over all its parameters, as clip_grad_norm_
                total = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)
                coef = (self._vectors["clip"] / (total + 1e-6)).clamp(max=1.0)
                for g in grads:
                    g.mul_(_bcast(coef, g.dim()))
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
