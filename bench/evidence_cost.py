"""What the evidence costs: all ten questions around nntune's default configuration, with and without populations.
Prints JSON, one object per line.

For each case (``mlp-digits``: the default MLP on digits; ``cnn-digits``: the default CNN) and each arm
(``population``: population sizes measured as ``nntune explain`` does; ``single``: one run at a time), the output
has the runs done, the distinct configurations, the variants skipped for the budget, the seconds, the seconds per
run and the population size used. Run on an otherwise idle machine; ``--budget`` caps each arm (default 600 s).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from nntune.config import RunConfig, apply_overrides
from nntune.evidence.explain import run_evidence
from nntune.training.context import RunContext
from nntune.training.pipeline import prepare_data

CASES = {"mlp-digits": {"model.family": "mlp"}, "cnn-digits": {"model.family": "cnn"}}


def measure(case: str, arm: str, epochs: int, seeds: int, budget: float, device: str) -> dict:
    cfg = apply_overrides(RunConfig(), {**CASES[case], "train.epochs": epochs, "train.device": device,
                                        "search.population": 1 if arm == "single" else None})
    data = prepare_data(cfg)
    search = RunContext(cfg, data)
    started = time.perf_counter()
    ev = run_evidence(cfg, search, seeds=seeds, budget=budget)
    seconds = time.perf_counter() - started
    setup = ev["setup"]
    return {"case": case, "arm": arm, "device": device, "epochs": epochs, "seeds": seeds, "budget": budget,
            "runs": setup["runs"], "configurations": setup["variants"] + 1, "skipped": setup["skipped"],
            "seconds": round(seconds, 1), "seconds_per_run": round(seconds / max(1, setup["runs"]), 3),
            "population_size": search.sizes.get(cfg.model.family, 1), "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="mlp-digits", help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--arms", default="population,single", help="comma-separated: population, single")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=600.0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    for case in args.cases.split(","):
        for arm in args.arms.split(","):
            print(json.dumps(measure(case, arm, args.epochs, args.seeds, args.budget, args.device)), flush=True)


if __name__ == "__main__":
    main()
