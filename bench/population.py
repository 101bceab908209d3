"""Population throughput: sequential ``Trainer.fit`` over K configurations vs one population of K. Prints JSON.

Both arms train the same K configurations (LRs log-spaced over 3e-4..3e-3, seeds 0..K-1, AdamW, cosine schedule,
early stopping off, a fixed number of epochs) on the same scaled tensors, on one device, in one process; one JSON
object per line with ``case``, ``device``, ``K``, ``sequential_model_epochs_per_s``,
``population_model_epochs_per_s`` and ``speedup``. Cases: ``mlp-digits`` (64-256-256-10), ``cnn-mnist5k`` (two conv
blocks of 16 and 32 filters, FC 64) and recurrent models on ``signals`` (a GRU of 16 or 64 units, a bidirectional
LSTM of 32; default head). The sequential arm is timed on at most ``--max-sequential`` configurations and
its rate extrapolated (it is linear in K). Targets: CPU (2 cores) >= 1.3x at K=32 for the MLP; GPU >= 50x at K=128 for
the MLP and >= 10x for the CNN.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from nntune.config import RunConfig, apply_overrides
from nntune.training.pipeline import fit_model, fit_population, prepare_data

CASES = {
    "mlp-digits": {"data.dataset": "digits", "model.family": "mlp", "model.widths": [256, 256]},
    "cnn-mnist5k": {"data.dataset": "mnist5k", "model.family": "cnn", "model.conv_blocks": 2, "model.filters": 16,
                    "model.fc_units": 64},
    "gru16-signals": {"data.dataset": "signals", "model.family": "rnn", "model.rnn_units": 16},
    "gru64-signals": {"data.dataset": "signals", "model.family": "rnn", "model.rnn_units": 64},
    "bilstm32-signals": {"data.dataset": "signals", "model.family": "rnn", "model.cell": "lstm",
                         "model.bidirectional": True, "model.rnn_units": 32},
}


def configs(case: str, k: int, epochs: int, device: str) -> list[RunConfig]:
    base = apply_overrides(RunConfig(), {**CASES[case], "train.epochs": epochs, "train.device": device,
                                         "train.early_stopping.enabled": False})
    lrs = torch.logspace(-3.5, -2.5, k).tolist() if k > 1 else [1e-3]
    return [apply_overrides(base, {"train.lr": lr, "seed": i}) for i, lr in enumerate(lrs)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(case: str, k: int, epochs: int, device: str, max_sequential: int, data) -> dict:
    cfgs = configs(case, k, epochs, device)
    seq = cfgs[:max_sequential]
    sync(device)
    t0 = time.perf_counter()
    for c in seq:
        fit_model(c, data)
    sync(device)
    seq_rate = len(seq) * epochs / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    fits = fit_population(cfgs, data)
    sync(device)
    pop_rate = k * epochs / (time.perf_counter() - t0)
    best = max(f.best.get("val_accuracy", 0.0) for _, f in fits)
    return {"case": case, "device": device_name(device), "K": k, "epochs": epochs,
            "sequential_model_epochs_per_s": round(seq_rate, 2), "population_model_epochs_per_s": round(pop_rate, 2),
            "speedup": round(pop_rate / seq_rate, 2), "best_val_accuracy": round(best, 4)}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--k", nargs="+", type=int, default=None, help="population sizes (CPU: 1 8 32; GPU: 1 8 32 128)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-sequential", type=int, default=8, help="configs timed in the sequential arm")
    args = p.parse_args()
    ks = args.k or ([1, 8, 32, 128] if args.device.startswith("cuda") else [1, 8, 32])
    for case in args.cases:
        data = prepare_data(configs(case, 1, args.epochs, args.device)[0])
        fit_model(configs(case, 1, 1, args.device)[0], data)  # warm-up (allocator, kernels)
        fit_population(configs(case, 2, 1, args.device), data)
        for k in ks:
            print(json.dumps(measure(case, k, args.epochs, args.device, args.max_sequential, data)), flush=True)


if __name__ == "__main__":
    main()
