"""How to stack K recurrent members: nntune's block-diagonal layer vs a batched cell vs K lone layers. Prints JSON.

One training step (forward and backward of the recurrent layer over a (B, L, C) batch per member, the loss the sum of
the outputs) timed three ways, each the fastest of ``--repeats`` after a warm-up:

- ``block_diagonal``: nntune's :class:`~nntune.training.population.stacked_recurrent.StackedRecurrent`, one
  ``nn.GRU``/``nn.LSTM`` call of K·H units whose weights are assembled from the members' blocks at every step;
- ``batched_cell``: the same recurrence written as one ``bmm`` over K per time step (the other formulation the
  issue names; written here for the measurement only);
- ``lone``: K separate ``nn.GRU``/``nn.LSTM`` calls, what a population of K costs without stacking.

One JSON object per line: ``cell``, ``units``, ``K``, and member-steps per second for each arm. The input is one
channel of length 64 with batches of 64 (the built-in ``signals`` data and the default batch size).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from nntune.config import ModelConfig
from nntune.models.builders import Recurrent
from nntune.training.population.stacked_recurrent import StackedRecurrent


def batched_cell(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b: torch.Tensor, lstm: bool) -> torch.Tensor:
    """Outputs (K, B, L, H) of K one-layer GRUs or LSTMs: one bmm over K per step (biases folded into ``b``)."""
    K, B, L, _ = x.shape
    H = w_hh.shape[2]
    gi = torch.baddbmm(b, x.reshape(K, B * L, -1), w_ih.transpose(1, 2)).view(K, B, L, -1)
    h, c, outs = x.new_zeros(K, B, H), x.new_zeros(K, B, H), []
    for t in range(L):
        gh = torch.bmm(h, w_hh.transpose(1, 2))
        if lstm:
            i, f, g, o = (gi[:, :, t] + gh).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        else:
            (ir, iz, inn), (hr, hz, hn) = gi[:, :, t].chunk(3, -1), gh.chunk(3, -1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            h = (1 - z) * torch.tanh(inn + r * hn) + z * h
        outs.append(h)
    return torch.stack(outs, 2)


def fastest(step, repeats: int) -> float:
    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(cell: str, units: int, K: int, batch: int, length: int, repeats: int) -> dict:
    torch.manual_seed(0)
    mod = Recurrent(ModelConfig(family="rnn", cell=cell, rnn_units=units, pooling="mean"), 1)
    members = [Recurrent(ModelConfig(family="rnn", cell=cell, rnn_units=units, pooling="mean"), 1) for _ in range(K)]
    tensors = {f"recurrent.rnn.{n}": torch.stack([dict(m.rnn.named_parameters())[n].detach() for m in members])
               .requires_grad_() for n, _ in mod.rnn.named_parameters()}
    stacked = StackedRecurrent("recurrent.", mod, tensors)
    x = torch.randn(K, batch, length, 1)
    channel = x.permute(1, 0, 3, 2).reshape(batch, K, length)  # (B, K·C, L), the population's layout

    def block_diagonal():
        stacked(channel, True, K).sum().backward()

    G = 4 if cell == "lstm" else 3
    w_ih = (torch.randn(K, G * units, 1) * 0.1).requires_grad_()
    w_hh = (torch.randn(K, G * units, units) * 0.1).requires_grad_()
    b = torch.zeros(K, 1, G * units, requires_grad=True)

    def cell_step():
        batched_cell(x, w_ih, w_hh, b, cell == "lstm").sum().backward()

    def lone():
        for k, m in enumerate(members):
            m(x[k].transpose(1, 2)).sum().backward()

    rates = {name: round(K / fastest(fn, repeats), 1)
             for name, fn in (("block_diagonal", block_diagonal), ("batched_cell", cell_step), ("lone", lone))}
    return {"cell": cell, "units": units, "K": K, "member_steps_per_s": rates,
            "device": f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", nargs="+", default=["gru", "lstm"], choices=["gru", "lstm"])
    p.add_argument("--units", nargs="+", type=int, default=[16, 64, 128])
    p.add_argument("--k", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    for cell in args.cells:
        for units in args.units:
            for k in args.k:
                print(json.dumps(measure(cell, units, k, args.batch, args.length, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
