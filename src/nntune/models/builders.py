"""Model builders (seed topics 2, 3, 4, 6): MLPs and 1-D/2-D CNNs from a :class:`~nntune.config.ModelConfig`.

Layers get stable, readable names (``fc1``, ``block2.conv1``, ``drop_pool1``, ``out``) so that summaries, freezing
patterns and the report can refer to them. Outputs are logits; softmax lives in the loss and in ``predict_proba``.
Weights are initialised for the activation (He for the ReLU family, LeCun for SELU, Xavier for tanh/sigmoid) from a
seeded generator, so the same seed gives the same model.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from nntune.config import ModelConfig
from nntune.errors import SpecError
from nntune.registry import ACTIVATIONS

EVAL_BATCH = 2048


def forward_batched(model: nn.Module, x: torch.Tensor, batch: int = EVAL_BATCH) -> torch.Tensor:
    """Model outputs for ``x`` in eval mode under ``inference_mode``, in batches on the model's device; on the CPU."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    model.eval()
    with torch.inference_mode():
        outs = [model(x[i:i + batch].to(device)).cpu() for i in range(0, len(x), batch)]
    return torch.cat(outs) if outs else torch.empty(0)


def make_activation(name: str, leaky_slope: float = 0.01) -> nn.Module:
    """An activation module by name (see :data:`nntune.registry.ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise SpecError(f"model.activation: unknown activation {name!r} (choose one of {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name].make(leaky_slope)


def build_model(cfg: ModelConfig, input_shape: Sequence[int], n_outputs: int, seed: int = 0) -> nn.Module:
    """Build the model the config describes for inputs of ``input_shape`` (without the batch dimension)."""
    input_shape = tuple(int(s) for s in input_shape)
    if n_outputs < 1:
        raise SpecError(f"model: n_outputs must be at least 1, got {n_outputs}")
    if cfg.family == "mlp":
        model = _build_mlp(cfg, input_shape, n_outputs)
    elif cfg.family == "rnn":
        model = _build_rnn(cfg, input_shape, n_outputs)
    else:
        model = _build_cnn(cfg, input_shape, n_outputs)
    initialize(model, cfg.activation, cfg.leaky_slope, seed)
    return model


def _dense_layers(cfg: ModelConfig, n_in: int, widths: list[int], dropout: float, prefix: str = "") -> OrderedDict:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i, width in enumerate(widths, start=1):
        layers[f"{prefix}fc{i}"] = nn.Linear(n_in, width)
        if cfg.batch_norm:
            layers[f"{prefix}bn{i}"] = nn.BatchNorm1d(width)
        layers[f"{prefix}act{i}"] = make_activation(cfg.activation, cfg.leaky_slope)
        if dropout > 0:
            layers[f"{prefix}drop{i}"] = nn.Dropout(dropout)
        n_in = width
    return layers


def _build_mlp(cfg: ModelConfig, input_shape: tuple[int, ...], n_outputs: int) -> nn.Sequential:
    n_in = 1
    for s in input_shape:
        n_in *= s
    widths = cfg.hidden_widths()
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    layers.update(_dense_layers(cfg, n_in, widths, cfg.dropout))
    layers["out"] = nn.Linear(widths[-1], n_outputs)
    return nn.Sequential(layers)


class ConvBlock(nn.Module):
    """``convs_per_block`` x (conv -> [bn] -> act); with ``residual`` the block input is added before the last act.

    Convolutions keep the length (``same`` padding) at the block's ``dilation``; a causal block pads on the left
    only (``(kernel - 1) · dilation`` zeros), so each output step sees the current and earlier steps alone."""

    def __init__(self, cfg: ModelConfig, dims: int, c_in: int, c_out: int, dilation: int = 1) -> None:
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        norm = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        self.residual = cfg.residual
        self.body_names: list[str] = []
        for k in range(1, cfg.convs_per_block + 1):
            c = c_in if k == 1 else c_out
            if cfg.causal:
                self._add(f"pad{k}", nn.ConstantPad1d(((cfg.kernel_size - 1) * dilation, 0), 0.0))
                self._add(f"conv{k}", conv(c, c_out, cfg.kernel_size, dilation=dilation))
            else:
                self._add(f"conv{k}", conv(c, c_out, cfg.kernel_size, padding="same", dilation=dilation))
            if cfg.batch_norm:
                self._add(f"bn{k}", norm(c_out))
            if not (self.residual and k == cfg.convs_per_block):
                self._add(f"act{k}", make_activation(cfg.activation, cfg.leaky_slope))
        if self.residual:
            self.shortcut = conv(c_in, c_out, 1) if c_in != c_out else nn.Identity()
            self.act = make_activation(cfg.activation, cfg.leaky_slope)

    def _add(self, name: str, module: nn.Module) -> None:
        self.add_module(name, module)
        self.body_names.append(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for name in self.body_names:
            y = self._modules[name](y)
        return self.act(y + self.shortcut(x)) if self.residual else y


def _build_cnn(cfg: ModelConfig, input_shape: tuple[int, ...], n_outputs: int) -> nn.Sequential:
    if len(input_shape) not in (2, 3):
        raise SpecError(f"model.family: cnn needs signals (C, L) or images (C, H, W); got input shape {input_shape}")
    dims = len(input_shape) - 1
    if cfg.causal and dims != 1:
        raise SpecError(f"model.causal: causal convolutions are for signals (C, L); got input shape {input_shape}")
    pool = {("max", 1): nn.MaxPool1d, ("max", 2): nn.MaxPool2d, ("avg", 1): nn.AvgPool1d, ("avg", 2): nn.AvgPool2d}
    spatial_drop = nn.Dropout1d if dims == 1 else nn.Dropout2d
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels, size = input_shape[0], list(input_shape[1:])
    for b, filters in enumerate(cfg.block_filters(), start=1):
        layers[f"block{b}"] = ConvBlock(cfg, dims, channels, filters, cfg.dilation_growth ** (b - 1))
        channels = filters
        if cfg.pool != "none":
            size = [s // 2 for s in size]
            if min(size) < 1:
                raise SpecError(
                    f"model.conv_blocks: {cfg.conv_blocks} pooled blocks shrink the "
                    f"{'x'.join(map(str, input_shape[1:]))} input below 1 pixel at block {b}; "
                    f"use at most {b - 1} blocks or pool=none"
                )
            layers[f"pool{b}"] = pool[(cfg.pool, dims)](2)
            if cfg.dropout_after_pool > 0:
                layers[f"drop_pool{b}"] = spatial_drop(cfg.dropout_after_pool)
    if cfg.head == "gap":
        layers["gap"] = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
        n_features = channels
    else:
        n_features = channels
        for s in size:
            n_features *= s
    layers["flatten"] = nn.Flatten()
    if cfg.dropout_before_fc > 0:
        layers["drop_before_fc"] = nn.Dropout(cfg.dropout_before_fc)
    widths = [cfg.fc_units] * cfg.fc_layers
    layers.update(_dense_layers(cfg, n_features, widths, cfg.dropout_after_fc, prefix="head_"))
    layers["out"] = nn.Linear(widths[-1] if widths else n_features, n_outputs)
    return nn.Sequential(layers)


class Recurrent(nn.Module):
    """GRU or LSTM layers over time (the L axis of (N, C, L) inputs), pooled to one feature vector per sample: the
    last state (for a bidirectional network, the forward direction's last step and the backward one's first), the
    mean over time, or attention weights over time from a learned scoring layer."""

    def __init__(self, cfg: ModelConfig, c_in: int) -> None:
        super().__init__()
        cell = nn.GRU if cfg.cell == "gru" else nn.LSTM
        self.rnn = cell(c_in, cfg.rnn_units, num_layers=cfg.rnn_layers, batch_first=True,
                        dropout=cfg.rnn_dropout if cfg.rnn_layers > 1 else 0.0, bidirectional=cfg.bidirectional)
        self.units, self.bidirectional, self.pooling = cfg.rnn_units, cfg.bidirectional, cfg.pooling
        self.out_features = cfg.rnn_units * (2 if cfg.bidirectional else 1)
        if cfg.pooling == "attention":
            self.attention = nn.Linear(self.out_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.transpose(1, 2))  # (N, L, H * directions)
        if self.pooling == "mean":
            return out.mean(1)
        if self.pooling == "attention":
            return (torch.softmax(self.attention(out), dim=1) * out).sum(1)
        if self.bidirectional:
            return torch.cat([out[:, -1, :self.units], out[:, 0, self.units:]], dim=1)
        return out[:, -1]


def _build_rnn(cfg: ModelConfig, input_shape: tuple[int, ...], n_outputs: int) -> nn.Sequential:
    if len(input_shape) != 2:
        raise SpecError(f"model.family: rnn needs signals (C, L), time along L; got input shape {input_shape}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels = input_shape[0]
    if cfg.frontend_filters:
        layers["frontend"] = nn.Conv1d(channels, cfg.frontend_filters, cfg.kernel_size, padding="same")
        if cfg.batch_norm:
            layers["frontend_bn"] = nn.BatchNorm1d(cfg.frontend_filters)
        layers["frontend_act"] = make_activation(cfg.activation, cfg.leaky_slope)
        channels = cfg.frontend_filters
    layers["recurrent"] = Recurrent(cfg, channels)
    n_features = layers["recurrent"].out_features
    widths = [cfg.fc_units] * cfg.fc_layers
    layers.update(_dense_layers(cfg, n_features, widths, cfg.dropout_after_fc, prefix="head_"))
    layers["out"] = nn.Linear(widths[-1] if widths else n_features, n_outputs)
    return nn.Sequential(layers)


def initialize(model: nn.Module, activation: str, leaky_slope: float = 0.01, seed: int = 0) -> None:
    """Initialise weights for the activation from a seeded generator; biases start at zero. Recurrent layers get
    Xavier input weights, orthogonal recurrent weights and, for an LSTM, forget-gate biases of 1 (Jozefowicz et
    al.), the usual start that keeps early gradients from vanishing or exploding through time."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.RNNBase):
            for name, p in m.named_parameters():
                if name.startswith("weight_ih"):
                    nn.init.xavier_uniform_(p, generator=gen)
                elif name.startswith("weight_hh"):
                    nn.init.orthogonal_(p, generator=gen)
                else:
                    nn.init.zeros_(p)
                    if isinstance(m, nn.LSTM) and name.startswith("bias_ih"):
                        p.data[m.hidden_size:2 * m.hidden_size] = 1.0
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    output = layers[-1] if layers else None
    init = ACTIVATIONS[activation].init
    for m in layers:
        w = m.weight
        if m is output or init.startswith("xavier"):
            gain = nn.init.calculate_gain("tanh") if init == "xavier_tanh" and m is not output else 1.0
            nn.init.xavier_uniform_(w, gain=gain, generator=gen)
        elif init == "kaiming_linear":
            nn.init.kaiming_normal_(w, nonlinearity="linear", generator=gen)
        elif init == "kaiming_leaky":
            nn.init.kaiming_normal_(w, a=leaky_slope, nonlinearity="leaky_relu", generator=gen)
        else:
            nn.init.kaiming_normal_(w, nonlinearity="relu", generator=gen)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
