"""What the evidence costs: all ten questions around nntune's default configuration, with and without populations.
Prints JSON, one object per line.

For each case (``FAMILY-DATASET``: nntune's default MLP or CNN on a built-in dataset) and each arm (``population``:
population sizes measured as ``nntune explain`` does; ``single``: one run at a time), the output has the runs done,
the distinct configurations, the variants skipped for the budget, the seconds, the seconds per run, the population
size used, and the budget plan's estimate against the time measured (``plan_error``: estimate / measured - 1, over
the first seeds of every variant, the probe included). Run on an otherwise idle machine; ``--budget`` caps each arm
(default 600 s).
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

CASES = {f"{family}-{dataset}": {"model.family": family, "data.dataset": dataset}
         for family, dataset in (("mlp", "digits"), ("cnn", "digits"), ("mlp", "wine"), ("mlp", "breast_cancer"),
                                 ("cnn", "signals"), ("mlp", "mnist5k"))}


def measure(case: str, arm: str, epochs: int, seeds: int, budget: float, device: str, resplit: bool) -> dict:
    cfg = apply_overrides(RunConfig(), {**CASES[case], "train.epochs": epochs, "train.device": device,
                                        "search.population": 1 if arm == "single" else None})
    data = prepare_data(cfg)
    search = RunContext(cfg, data)
    started = time.perf_counter()
    ev = run_evidence(cfg, search, seeds=seeds, budget=budget, resplit=resplit)
    seconds = time.perf_counter() - started
    setup, plan = ev["setup"], ev["setup"]["plan"] or {}
    estimate = plan.get("probe_seconds", 0) + plan.get("planned_seconds", 0)
    return {"case": case, "arm": arm, "device": device, "epochs": epochs, "seeds": seeds, "budget": budget,
            "resplit": resplit, "runs": setup["runs"], "configurations": setup["variants"] + 1,
            "skipped": setup["skipped"], "seconds": round(seconds, 1),
            "seconds_per_run": round(seconds / max(1, setup["runs"]), 3),
            "plan_estimate": round(estimate, 1), "plan_measured": plan.get("measured_seconds"),
            "plan_error": round(estimate / plan["measured_seconds"] - 1, 3) if plan.get("measured_seconds") else None,
            "answered": len(plan.get("answered", [])), "unanswered": plan.get("unanswered"),
            "budget_one_per_question": round(plan.get("probe_seconds", 0) + plan.get("one_each_seconds", 0), 1),
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
    parser.add_argument("--resplit", action="store_true", help="each seed on its own split, as nntune explain does")
    args = parser.parse_args()
    for case in args.cases.split(","):
        for arm in args.arms.split(","):
            print(json.dumps(measure(case, arm, args.epochs, args.seeds, args.budget, args.device, args.resplit)),
                  flush=True)


if __name__ == "__main__":
    main()
