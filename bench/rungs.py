"""Which LR-schedule rule successive halving should use when it continues a trial (issue 24, part 1).

Rule ``horizon`` (what ``--pruner halving`` does): every trial's schedule is defined on the top rung, and a promoted
trial simply trains on, so its rung scores come from one run. Rule ``restart``: every rung trains the trial from
scratch under a schedule that anneals within that rung's epochs (classic Hyperband brackets), which scores each rung
at its best but repeats the earlier epochs. For N configurations of one structure (LR, weight decay, dropout and
seed sampled; cosine schedule; no early stopping, so rungs are read exactly) this trains every configuration to the
top rung once (``horizon``) and to each lower rung from scratch (``restart``), then runs successive halving (eta 3)
with each rule's rung scores. Prints JSON lines: the machine, then per dataset and draw the rank correlation of each rung's scores with the
top-rung scores, the chosen configuration's top-rung validation score against the best available, and the epochs
each rule trained.

    python bench/rungs.py --datasets digits signals --draws 0 1 2 --configs 27
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch
from scipy.stats import spearmanr

from nntune.config import RunConfig, apply_overrides
from nntune.search import halving
from nntune.search.space import trial_epochs
from nntune.training.pipeline import fit_population, prepare_data

FAMILY = {"digits": "mlp", "mnist5k": "mlp", "signals": "cnn", "wine": "mlp"}


def draw_configs(dataset: str, n: int, draw: int, epochs: int) -> list[RunConfig]:
    """``n`` members of one structure with log-uniform LR and weight decay, a dropout rate and a seed."""
    g = torch.Generator().manual_seed(draw)
    base = apply_overrides(RunConfig(), {"data.dataset": dataset, "model.family": FAMILY.get(dataset, "mlp"),
                                         "train.schedule.name": "cosine", "train.epochs": epochs,
                                         "train.early_stopping.patience": 10_000})
    dropout = "model.dropout" if base.model.family == "mlp" else "model.dropout_before_fc"

    def log_uniform(lo: float, hi: float) -> float:
        return math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand(1, generator=g).item())

    return [apply_overrides(base, {"train.lr": log_uniform(1e-4, 3e-2), "train.weight_decay": log_uniform(1e-6, 1e-2),
                                   dropout: 0.5 * torch.rand(1, generator=g).item(),
                                   "seed": 1000 * draw + i}) for i in range(n)]


def best_so_far(history: list[dict], epoch: int, key: str) -> float:
    return max(h[key] for h in history[:epoch])


def halve(scores: dict[int, list[float]], ladder: list[int], eta: int = 3) -> tuple[list[list[int]], int]:
    """Successive halving on precomputed scores: the survivors of each rung and the chosen configuration."""
    alive = list(range(len(scores[ladder[0]])))
    path = [alive]
    for r in ladder[:-1]:
        keep = max(1, len(alive) // eta)
        alive = sorted(alive, key=lambda i: -scores[r][i])[:keep]
        path.append(alive)
    top = ladder[-1]
    return path, max(alive, key=lambda i: scores[top][i])


def run(dataset: str, draw: int, n: int, top_factor: int) -> dict:
    probe = prepare_data(apply_overrides(RunConfig(), {"data.dataset": dataset}))
    usual = trial_epochs(len(probe.split.train))
    first = halving.first_rung(usual)
    top = first * top_factor
    ladder = halving.rungs(usual, top) + [top]
    key = "val_accuracy"
    t0 = time.perf_counter()
    cfgs = draw_configs(dataset, n, draw, top)
    data = prepare_data(cfgs[0])
    long = fit_population(cfgs, data)
    horizon = {r: [best_so_far(f.history, r, key) for _, f in long] for r in ladder}
    restart = {top: horizon[top]}  # the top rung is the same run under either rule
    for r in ladder[:-1]:
        fits = fit_population([apply_overrides(c, {"train.epochs": r}) for c in cfgs], data)
        restart[r] = [best_so_far(f.history, r, key) for _, f in fits]
    final = horizon[top]
    out = {"dataset": dataset, "draw": draw, "configs": n, "rungs": ladder, "best_available": max(final),
           "seconds": None}
    for name, scores in (("horizon", horizon), ("restart", restart)):
        path, chosen = halve(scores, ladder)
        if name == "horizon":  # a promoted trial trains on: each rung adds its epochs above the last
            epochs = sum(len(alive) * (r - (ladder[i - 1] if i else 0)) for i, (r, alive) in enumerate(zip(ladder,
                                                                                                       path)))
        else:  # every rung from scratch
            epochs = sum(len(alive) * r for r, alive in zip(ladder, path))
        out[name] = {"spearman_with_top": {r: round(float(spearmanr(scores[r], final).statistic), 3)
                                           for r in ladder[:-1]},
                     "chosen_top_score": final[chosen], "regret": round(max(final) - final[chosen], 4),
                     "epochs": epochs}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "signals"])
    parser.add_argument("--draws", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--configs", type=int, default=27)
    parser.add_argument("--top-factor", type=int, default=halving.ETA ** (halving.RUNGS - 1),
                        help="the top rung as a multiple of the first (default 27, as --pruner halving)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(json.dumps({"machine": platform.node(), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__}),
          flush=True)
    for d in args.datasets:  # one JSON line per run, as it ends
        for s in args.draws:
            print(json.dumps(run(d, s, args.configs, args.top_factor)), flush=True)


if __name__ == "__main__":
    main()
