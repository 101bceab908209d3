"""Search quality: nntune's default search (TPE, multivariate, median pruning) vs Optuna random search without
pruning over the same space and trial budget. Prints JSON with test accuracy of each final model and the time taken.

Both arms use the same data split, space, epochs per trial and final step (retrain best config on train+val, test
once). Results vary with the seed; pass several with --seeds to see the spread.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time

import torch

from nntune.config import RunConfig, apply_overrides
from nntune.search.study import tune

ARMS = {"nntune_default": {"search.sampler": "tpe", "search.pruner": "median"},
        "optuna_random": {"search.sampler": "random", "search.pruner": "none"}}


def run(dataset: str, trials: int, epochs: int, seed: int, arm: str) -> dict:
    cfg = apply_overrides(RunConfig(), {"data.dataset": dataset, "seed": seed, "search.trials": trials,
                                        "search.epochs": epochs, **ARMS[arm]})
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = tune(cfg, out)
    print(f"{dataset} {arm} seed {seed}: test {result['test']['accuracy']:.4f} in {time.perf_counter() - t0:.0f}s",
          file=sys.stderr)
    return {"test_accuracy": round(result["test"]["accuracy"], 4), "best_val": round(result["best_value"], 4),
            "trials": result["trials"], "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--datasets", default="digits,mnist5k")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", default="digits=30,mnist5k=10", help="max epochs per trial, per dataset")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    epochs = dict(kv.split("=") for kv in args.epochs.split(","))
    report = []
    for ds in args.datasets.split(","):
        for arm in ARMS:
            runs = [run(ds, args.trials, int(epochs.get(ds, 20)), int(s), arm) for s in args.seeds.split(",")]
            accs = [r["test_accuracy"] for r in runs]
            report.append({"dataset": ds, "arm": arm, "mean_test_accuracy": round(statistics.mean(accs), 4),
                           "mean_seconds": round(statistics.mean(r["seconds"] for r in runs), 1), "runs": runs})
    print(json.dumps({"benchmark": "search_quality", "machine": platform.machine(), "threads": args.threads,
                      "trials": args.trials, "seeds": args.seeds, "results": report}, indent=2))


if __name__ == "__main__":
    main()
