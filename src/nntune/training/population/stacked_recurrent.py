"""K recurrent members (GRU/LSTM, any layers, either direction) run as one block-diagonal ("wide") recurrent layer.

The wide layer has K·H hidden units; its weights are assembled at every forward pass from the members' stacked
tensors, each member's matrices on the diagonal blocks and exact zeros elsewhere, so one ``nn.GRU``/``nn.LSTM`` call
(MKL on a CPU, cuDNN on a GPU) runs every member and the gradient reaches the members' own entries only. The
arithmetic of each member is that of the member alone (the zeros add nothing; float64 tests compare them).

Why this formulation and not a batched cell (one ``bmm`` over K per time step, written in Python): on a 2-core CPU
the batched cell was slower in 29 of 30 cases measured (``bench/stacked_rnn.py``, docs/benchmarks.md), as its time
steps run as Python-level autograd ops; the block-diagonal layer runs them in torch's own loop and pays K× the
recurrent multiply-adds instead. That wins while K·H is small (eight GRUs of 16 units: 2.9× lone layers) and loses
for large H, where the population size probe keeps K at 1.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.func import functional_call

from nntune.models.builders import Recurrent


def _wide_index(name: str, member_shape: torch.Size, wide_cols: int, K: int, H: int, C: int) -> torch.Tensor:
    """For the wide parameter ``name``: the flat position of every member entry, a (K, *member_shape) index.

    Rows are gate-major (``gate·K·H + k·H + unit``, torch's gate order kept); columns of a first layer's input
    matrix are ``k·C + channel``, of a deeper layer's ``direction·K·H + k·H + unit`` (the wide output's layout) and
    of a recurrent matrix ``k·H + unit``."""
    k = torch.arange(K).view(K, 1)
    rows = torch.arange(member_shape[0])
    wide_rows = (rows // H) * K * H + k * H + rows % H
    if len(member_shape) == 1:
        return wide_rows
    cols = torch.arange(member_shape[1])
    if name.startswith("weight_hh"):
        wide = k * H + cols
    elif name.startswith("weight_ih_l0"):
        wide = k * C + cols
    else:
        wide = (cols // H) * K * H + k * H + cols % H
    return wide_rows.unsqueeze(2) * wide_cols + wide.unsqueeze(1)


class StackedRecurrent:
    """The population's form of one :class:`~nntune.models.builders.Recurrent` layer: (B, K·C, L) in, the pooled
    features (K, F, B) out, reading the members' weights from ``tensors`` under ``prefix``."""

    def __init__(self, prefix: str, mod: Recurrent, tensors: dict[str, torch.Tensor]) -> None:
        self.prefix, self.mod, self.tensors = prefix, mod, tensors
        self.names = [n for n, _ in mod.rnn.named_parameters()]
        self._wide: tuple[int, nn.RNNBase, dict[str, torch.Tensor]] | None = None

    def _build(self, K: int, device: torch.device) -> tuple[nn.RNNBase, dict[str, torch.Tensor]]:
        """The wide layer for K members (on the meta device: its own weights are never used) and its index maps;
        rebuilt when members leave the population."""
        if self._wide is None or self._wide[0] != K:
            rnn = self.mod.rnn
            wide = type(rnn)(K * rnn.input_size, K * rnn.hidden_size, num_layers=rnn.num_layers, batch_first=True,
                             dropout=rnn.dropout, bidirectional=rnn.bidirectional, device="meta")
            shapes = dict(rnn.named_parameters())
            index = {n: _wide_index(n, shapes[n].shape, p.shape[-1], K, rnn.hidden_size, rnn.input_size)
                     .flatten().to(device) for n, p in wide.named_parameters()}
            self._wide = (K, wide, index)
        return self._wide[1], self._wide[2]

    def __call__(self, x: torch.Tensor, train: bool, K: int) -> torch.Tensor:
        wide, index = self._build(K, x.device)
        t, pre = self.tensors, f"{self.prefix}rnn."
        params = {}
        for n in self.names:
            member = t[pre + n]
            size = wide.get_parameter(n).shape
            params[n] = member.new_zeros(size.numel()).scatter(0, index[n], member.reshape(-1)).view(size)
        wide.train(train)  # the dropout between layers
        with warnings.catch_warnings():  # cuDNN would compact the assembled weights; they are new every call anyway
            warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous")
            out, _ = functional_call(wide, params, (x.transpose(1, 2),))  # (B, L, dirs·K·H)
        B, L = out.shape[:2]
        dirs, H = 2 if self.mod.bidirectional else 1, self.mod.units
        seq = out.view(B, L, dirs, K, H).permute(3, 0, 1, 2, 4)  # (K, B, L, dirs, H)
        if self.mod.pooling == "mean":
            pooled = seq.mean(2).reshape(K, B, dirs * H)
        elif self.mod.pooling == "attention":
            feats = seq.reshape(K, B, L, dirs * H)
            w, b = t[f"{self.prefix}attention.weight"], t[f"{self.prefix}attention.bias"]  # (K, 1, F), (K, 1)
            scores = feats @ w.transpose(1, 2).unsqueeze(1) + b.view(K, 1, 1, 1)  # (K, B, L, 1)
            pooled = (torch.softmax(scores, dim=2) * feats).sum(2)
        elif dirs == 2:  # the forward direction's last step and the backward one's first, as Recurrent
            pooled = torch.cat([seq[:, :, -1, 0], seq[:, :, 0, 1]], dim=2)
        else:
            pooled = seq[:, :, -1, 0]
        return pooled.transpose(1, 2)  # (K, F, B): the dense layers' layout
