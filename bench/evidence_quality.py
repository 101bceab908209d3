"""Do the evidence's verdicts hold? False discoveries on data where nothing can matter, detections of planted effects.
Prints JSON, one object per line.

Cases (small synthetic data, so each fits the budget on a CPU):

- ``null``: class labels drawn at random, independent of the inputs; every question asked. Any better/worse verdict
  is a false discovery (counted per question and per run);
- ``normalization``: the class shows in four features a thousandth in scale beside four of pure noise a thousand
  times larger; the chosen z-score must beat ``none`` (the variant ``none`` is *worse*);
- ``augmentation``: the label is which half of an image is brighter, and the chosen augmentation flips images
  horizontally, which destroys it: ``without hflip`` (or ``none``) must be *better*;
- ``lr``: plain SGD at LR 4, far too high: ``lr ×⅓`` must be *better*;
- ``depth``: a checkerboard of 4×4 cells in two features, which one hidden layer of 8 units cannot draw: one layer
  more must be *better*.

Arms: ``population`` (population sizes measured as ``nntune explain`` measures them) and ``single`` (one run at a
time). Every run uses the defaults of ``nntune explain`` (3 first seeds, adaptive seeds up to 10, a split per seed)
within ``--budget`` seconds per case.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from nntune.config import RunConfig, apply_overrides
from nntune.data.sources import Dataset
from nntune.evidence.explain import run_evidence
from nntune.training.context import RunContext
from nntune.training.pipeline import prepare_data

SMALL = {"model.units": 32, "model.hidden_layers": 1, "train.epochs": 15, "train.batch_size": 32}


def blobs(n: int, features: int, classes: int, seed: int) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=g) * 1.5
    y = torch.randint(0, classes, (n,), generator=g)
    return Dataset("blobs", centers[y] + torch.randn(n, features, generator=g), y, "classification",
                   [str(i) for i in range(classes)])


def case_data(case: str, seed: int) -> tuple[Dataset, dict, list[str] | None, str, str]:
    """(data, config overrides, questions, planted question, expected (variant name prefix, verdict))."""
    g = torch.Generator().manual_seed(seed + 100)
    if case == "null":
        ds = blobs(400, 8, 4, seed)
        ds.y = torch.randint(0, 4, (len(ds),), generator=g)
        return ds, {**SMALL, "model.dropout": 0.2}, None, "", ""
    if case == "normalization":
        ds = blobs(600, 4, 4, seed)
        ds.x = torch.cat([ds.x * 2e-3, torch.randn(len(ds), 4, generator=g) * 1e3], dim=1)
        return ds, {**SMALL, "preprocess.scaler": "zscore", "train.lr": 0.01}, ["normalization"], "none", "worse"
    if case == "augmentation":
        n = 400
        y = torch.randint(0, 2, (n,), generator=g)
        x = torch.rand(n, 1, 8, 8, generator=g) * 0.5
        bright = torch.where(y.bool().view(-1, 1, 1), torch.arange(8) >= 4, torch.arange(8) < 4)
        ds = Dataset("halves", x + 0.5 * bright.view(n, 1, 1, 8).float(), y, "classification", ["left", "right"])
        return ds, {**SMALL, "preprocess.augment": "custom", "preprocess.augment_strength": 1.0,
                    "preprocess.augment_ops": [{"op": "hflip"}, {"op": "noise", "std": 0.02}]}, \
            ["augmentation"], "without hflip", "better"
    if case == "lr":
        return blobs(400, 8, 4, seed), {**SMALL, "train.optimizer": "sgd", "train.lr": 4.0,
                                        "preprocess.scaler": "zscore"}, ["lr"], "lr ×⅓", "better"
    x = torch.rand(800, 2, generator=g) * 4
    y = ((x[:, 0].floor() + x[:, 1].floor()) % 2).long()
    ds = Dataset("checkerboard", x, y, "classification", ["even", "odd"])
    return ds, {**SMALL, "model.units": 8, "train.epochs": 40, "train.lr": 0.01}, ["depth"], "2 hidden", "better"


def measure(case: str, arm: str, seed: int, budget: float) -> dict:
    ds, over, questions, planted, expected = case_data(case, seed)
    cfg = apply_overrides(RunConfig(), {**over, "seed": seed, "search.population": 1 if arm == "single" else None})
    context = RunContext(cfg, prepare_data(cfg, ds))
    started = time.perf_counter()
    ev = run_evidence(cfg, context, seeds=3, budget=budget, questions=questions, max_seeds=10, resplit=True)
    seconds = time.perf_counter() - started
    rows = [(q, r) for q, entry in ev.items() if q != "setup" for r in entry.get("variants", [])]
    decided = [(q, r["name"], r["verdict"]) for q, r in rows if r.get("verdict") in ("better", "worse")
               and q != "early_stopping"]
    out = {"case": case, "arm": arm, "seed": seed, "budget": budget, "seconds": round(seconds, 1),
           "runs": ev["setup"]["runs"], "extra_seeds": len(ev["setup"]["adaptive"]["extra_seeds"]),
           "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if case == "null":
        compared = [(q, r) for q, r in rows if r.get("verdict") and q != "early_stopping"]
        out.update(comparisons=len(compared), false_discoveries=len(decided),
                   questions_with_a_false_discovery=len({q for q, _, _ in decided}), decided=decided,
                   early_stopping_better=sum(r.get("verdict") == "better" for q, r in rows if q == "early_stopping"))
    else:
        hit = [r for q, r in rows if r["name"].startswith(planted)]
        out.update(planted=f"{planted}: {expected}", found=bool(hit) and hit[0].get("verdict") == expected,
                   verdict=hit[0].get("verdict") if hit else None, diff=hit[0].get("diff") if hit else None,
                   n=hit[0].get("n") if hit else None, other_decisions=[d for d in decided if not d[1].startswith(planted)])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="null,normalization,augmentation,lr,depth")
    parser.add_argument("--arms", default="population,single")
    parser.add_argument("--seeds", default="0", help="comma-separated data seeds (repeats)")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per case (default 120)")
    args = parser.parse_args()
    for seed in (int(s) for s in args.seeds.split(",")):
        for case in args.cases.split(","):
            for arm in args.arms.split(","):
                print(json.dumps(measure(case, arm, seed, args.budget)), flush=True)


if __name__ == "__main__":
    main()
