"""The final model: the chosen configuration retrained on train+val against its finalist seeds as one ensemble, on
the same search (same seed, trial cap and population size, so both arms choose the same trial). Prints JSON: per
dataset and seed, each arm's test metric, the ensemble's and its seeds' validation scores, and what ``--final auto``
would have taken (issue 24: "offer the ensemble when it measures better on validation").

    python bench/final_model.py --datasets digits signals --seeds 0 1 2 --trials 12
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time

import torch

from nntune.config import RunConfig, apply_overrides
from nntune.search.study import tune


def run(dataset: str, seed: int, trials: int, population: int, final: str) -> dict:
    cfg = apply_overrides(RunConfig(), {"data.dataset": dataset, "seed": seed, "search.trials": trials,
                                        "search.population": population, "search.final": final})
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = tune(cfg, out)
        seconds = time.perf_counter() - t0
    metric = "accuracy" if "accuracy" in result["test"] else "loss"
    return {"chosen": result["best_trial"], "test": result["test"][metric], "metric": metric,
            "record": result["final"].get("ensemble"), "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "signals"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--population", type=int, default=4)
    args = parser.parse_args()
    rows = []
    for dataset in args.datasets:
        for seed in args.seeds:
            retrain = run(dataset, seed, args.trials, args.population, "retrain")
            ensemble = run(dataset, seed, args.trials, args.population, "ensemble")
            record = ensemble["record"] or {}
            rows.append({"dataset": dataset, "seed": seed, "same_choice": retrain["chosen"] == ensemble["chosen"],
                         "retrain_test": retrain["test"], "ensemble_test": ensemble["test"],
                         "ensemble_val": record.get("ensemble"), "seeds_val": record.get("members"),
                         "auto_takes": "ensemble" if record.get("better") else "retrain",
                         "seconds": [retrain["seconds"], ensemble["seconds"]]})
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for dataset in args.datasets:
        mine = [r for r in rows if r["dataset"] == dataset]
        auto = [r["ensemble_test"] if r["auto_takes"] == "ensemble" else r["retrain_test"] for r in mine]
        summary[dataset] = {"retrain": statistics.fmean(r["retrain_test"] for r in mine),
                            "ensemble": statistics.fmean(r["ensemble_test"] for r in mine),
                            "auto": statistics.fmean(auto)}
    print(json.dumps({"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                      "trials": args.trials, "population": args.population, "mean_test": summary}))


if __name__ == "__main__":
    main()
