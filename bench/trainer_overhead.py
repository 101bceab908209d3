"""Trainer overhead: nntune's Trainer (callbacks on) vs a minimal hand-written PyTorch loop. Prints JSON.

Both train the same model from the same initial weights on the same scaled tensors, with the same seed, threads,
batch size and optimizer, and both validate once per epoch. A third loop uses torch's DataLoader over a
TensorDataset, the way many tutorials write it, for context. Each variant is timed ``--repeats`` times after a
warm-up; the median is reported. Target: nntune / minimal samples-per-second ratio >= 1/1.05.

``--device cuda`` runs every loop on the GPU (the minimal loop with the same autocast dtype nntune's
``--precision`` resolves to) and adds nntune on the CPU for the GPU-vs-CPU speedup; ``--compile`` adds nntune with
``train.compile``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch
from torch import nn

from nntune.config import EarlyStoppingConfig, ModelConfig, RunConfig, TrainConfig, apply_overrides
from nntune.models import build_model
from nntune.training.callbacks import BestCheckpoint, Callback
from nntune.training.early_stopping import EarlyStopping
from nntune.training.pipeline import prepare_data
from nntune.training.device import resolve_precision
from nntune.training.single import Trainer

SETUP = {"device": torch.device("cpu"), "precision": "auto", "amp": None, "compile": False}


def minimal_loop(model, x, y, xv, yv, epochs, bs, seed):
    dev, amp = SETUP["device"], SETUP["amp"]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(dev)
    x, y, xv, yv = (t.to(dev) for t in (x, y, xv, yv))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen).to(dev)
        for i in range(0, len(x), bs):
            idx = perm[i:i + bs]
            with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.inference_mode():
            val_loss = loss_fn(model(xv), yv).item()
    return val_loss


def dataloader_loop(model, x, y, xv, yv, epochs, bs, seed):
    dev, amp = SETUP["device"], SETUP["amp"]
    torch.manual_seed(seed)
    model.to(dev)
    xv, yv = xv.to(dev), yv.to(dev)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=bs, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                loss = loss_fn(model(xb.to(dev)), yb.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.inference_mode():
            val_loss = loss_fn(model(xv), yv).item()
    return val_loss


class History(Callback):
    def __init__(self):
        self.rows = []

    def on_epoch_end(self, trainer, epoch, logs):
        self.rows.append(logs)


def nntune_loop(model, x, y, xv, yv, epochs, bs, seed, tmp, device=None, compile=False):
    cfg = TrainConfig(epochs=epochs, batch_size=bs, schedule={"name": "none"}, device=str(device or SETUP["device"]),
                      precision=SETUP["precision"], compile=compile)
    callbacks = [EarlyStopping(EarlyStoppingConfig(patience=epochs)), BestCheckpoint(f"{tmp}/best.safetensors"),
                 History()]
    return Trainer(model, "classification", cfg, callbacks, seed=seed).fit(x, y, xv, yv).history[-1]["val_loss"]


def bench_case(name, model_cfg, dataset, epochs, bs, repeats, seed, tmp):
    cfg = apply_overrides(RunConfig(), {"data.dataset": dataset, "seed": seed})
    data = prepare_data(cfg)
    x, y, xv, yv = data.x_train, data.y_train, data.x_val, data.y_val
    base = build_model(model_cfg, data.dataset.input_shape, 10, seed=seed)
    loops = {"minimal": minimal_loop, "dataloader": dataloader_loop,
             "nntune": lambda *a: nntune_loop(*a, tmp=tmp)}
    if SETUP["device"].type != "cpu":
        loops["nntune_cpu"] = lambda *a: nntune_loop(*a, tmp=tmp, device="cpu")
    if SETUP["compile"]:
        loops["nntune_compiled"] = lambda *a: nntune_loop(*a, tmp=tmp, compile=True)
    times = {k: [] for k in loops}
    for rep in range(repeats + 1):  # first round is warm-up
        order = list(loops) if rep % 2 == 0 else list(reversed(loops))
        for k in order:
            model = copy.deepcopy(base)
            t0 = time.perf_counter()
            loops[k](model, x, y, xv, yv, epochs, bs, seed)
            if rep:
                times[k].append(time.perf_counter() - t0)
    sps = {k: len(x) * epochs / statistics.median(v) for k, v in times.items()}
    return {
        "case": name, "dataset": dataset, "train_samples": len(x), "epochs": epochs, "batch_size": bs,
        "samples_per_s": {k: round(v, 1) for k, v in sps.items()},
        "ratio_nntune_vs_minimal": round(sps["nntune"] / sps["minimal"], 3),
        "ratio_nntune_vs_dataloader": round(sps["nntune"] / sps["dataloader"], 3),
        **({"speedup_vs_nntune_cpu": round(sps["nntune"] / sps["nntune_cpu"], 2)} if "nntune_cpu" in sps else {}),
        **({"speedup_compiled": round(sps["nntune_compiled"] / sps["nntune"], 2)} if "nntune_compiled" in sps else {}),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true", help="also time nntune with train.compile")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    SETUP.update(device=device, precision=args.precision, amp=resolve_precision(args.precision, device),
                 compile=args.compile)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cases = [
            bench_case("cnn/mnist5k", ModelConfig(family="cnn", filters=16, fc_units=64), "mnist5k",
                       args.epochs, args.batch_size, args.repeats, 0, tmp),
            bench_case("mlp/digits", ModelConfig(), "digits", args.epochs * 10, args.batch_size, args.repeats, 0, tmp),
        ]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    print(json.dumps({"benchmark": "trainer_overhead", "machine": platform.processor() or platform.machine(),
                      "gpu": gpu, "device": str(device), "precision": args.precision, "threads": args.threads,
                      "torch": torch.__version__, "cases": cases}, indent=2))


if __name__ == "__main__":
    main()
