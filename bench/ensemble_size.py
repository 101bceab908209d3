"""How much each seed adds to a seed ensemble: one configuration trained with member seeds S, S+1000, ... on the
split of seed S, and the first k members' averaged probabilities scored on validation and test for every k. The
measurement behind ``--final-seeds`` (the seed ensemble that grows into the time the retrain would have taken).
Prints one JSON line per (split, k) and a summary: mean test and validation accuracy per k.

    python bench/ensemble_size.py --dataset mnist5k --splits 0 1 2 --members 4 \\
        --set model.family=cnn model.batch_norm=true model.dropout_before_fc=0.3 preprocess.augment=digits
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import yaml

from nntune.config import RunConfig, apply_overrides
from nntune.training.pipeline import fit_model, prepare_data


def _accuracy(probs: list[torch.Tensor], y: torch.Tensor) -> float:
    return round(float((torch.stack(probs).mean(0).argmax(1) == y).float().mean()), 4)


def run(base: RunConfig, split: int, members: int) -> list[dict]:
    """Train ``members`` seeds on the split of seed ``split``; one row per ensemble size."""
    data = prepare_data(apply_overrides(base, {"seed": split}))
    val, test, rows = [], [], []
    for m in range(members):
        started = time.perf_counter()
        model, _, fit = fit_model(apply_overrides(base, {"seed": split + 1000 * m}), data)
        model.eval()
        with torch.no_grad():
            val.append(torch.softmax(model(data.x_val), 1))
            test.append(torch.softmax(model(data.x_test), 1))
        rows.append({"split": split, "members": m + 1, "val_alone": _accuracy(val[-1:], data.y_val),
                     "test_alone": _accuracy(test[-1:], data.y_test), "val_ens": _accuracy(val, data.y_val),
                     "test_ens": _accuracy(test, data.y_test), "epochs": len(fit.history),
                     "seconds": round(time.perf_counter() - started, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (YAML values)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    base = apply_overrides(RunConfig(), {"data.dataset": args.dataset, **overrides})
    rows = [r for split in args.splits for r in run(base, split, args.members)]
    summary = [{"members": k, "test": round(statistics.fmean(r["test_ens"] for r in rows if r["members"] == k), 4),
                "val": round(statistics.fmean(r["val_ens"] for r in rows if r["members"] == k), 4)}
               for k in range(1, args.members + 1)]
    print(json.dumps({"benchmark": "ensemble_size", "machine": platform.machine(), "threads": args.threads,
                      "torch": torch.__version__, "dataset": args.dataset, "overrides": overrides,
                      "splits": args.splits, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
