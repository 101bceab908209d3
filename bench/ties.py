"""Ties at the top of a finished search: how many complete trials share the best validation score, and whether the
validation loss (nntune's tie-break, ``search.objectives.rank``) picks better among them than the trial number
(Optuna's ``best_trial``: the first of equals), and which of the two validation numbers orders the best tenth of the
trials by their test accuracy. Reads a kept run directory (``nntune tune --out DIR``), scores every
complete trial's saved weights on the test split once, and prints JSON.

    python bench/ties.py /path/to/run-dir
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from nntune import artifacts
from nntune.config import build_config
from nntune.search.objectives import maximize, rank, score
from nntune.training.pipeline import prepare_data


def _spearman(a: list[float], b: list[float]) -> float | None:
    """Rank correlation (average ranks for ties); None with fewer than 3 points or no spread."""
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=v.__getitem__)
        out = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out
    if len(a) < 3:
        return None
    ra, rb = ranks(a), ranks(b)
    sa, sb = statistics.pstdev(ra), statistics.pstdev(rb)
    if not sa or not sb:
        return None
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    return round(statistics.fmean((x - ma) * (y - mb) for x, y in zip(ra, rb)) / (sa * sb), 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    args = p.parse_args()
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{args.run_dir / 'study.db'}")
    up = maximize(study)
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if score(t) is not None and math.isfinite(score(t)) and (args.run_dir / "trials" / str(t.number)).is_dir()]
    cfg = build_config(done[0].user_attrs["config"])
    data = prepare_data(cfg)
    x, y = data.dataset.x[data.split.test], data.y_test

    def test_accuracy(t) -> float:
        with torch.no_grad():
            out = artifacts.load(args.run_dir / "trials" / str(t.number)).outputs(x)
        return float((out.argmax(1) == y).float().mean())

    top = (max if up else min)(score(t) for t in done)
    tied = sorted((t for t in done if score(t) == top), key=lambda t: t.number)
    acc = {t.number: test_accuracy(t) for t in tied}
    losses = [rank(t, up)[1] for t in tied]
    tenth = sorted(done, key=lambda t: rank(t, up))[:max(len(tied), math.ceil(len(done) / 10))]
    acc.update({t.number: test_accuracy(t) for t in tenth if t.number not in acc})
    tenth_acc = [acc[t.number] for t in tenth]
    half = sorted(tied, key=lambda t: rank(t, up))
    by_loss = half[0]
    lower = [acc[t.number] for t in half[:len(half) // 2]]
    upper = [acc[t.number] for t in half[len(half) - len(half) // 2:]]
    print(json.dumps({
        "benchmark": "ties", "run_dir": str(args.run_dir), "dataset": cfg.data.dataset, "seed": cfg.seed,
        "complete": len(done), "best_val_score": top, "tied_at_best": len(tied),
        "test_accuracy": {"first_of_ties": acc[tied[0].number], "lowest_val_loss": acc[by_loss.number],
                          "mean_of_ties": round(statistics.fmean(acc.values()), 4),
                          "lower_half_by_val_loss": round(statistics.fmean(lower), 4) if lower else None,
                          "upper_half_by_val_loss": round(statistics.fmean(upper), 4) if upper else None},
        "trials": {"first_of_ties": tied[0].number, "lowest_val_loss": by_loss.number},
        "spearman_val_loss_vs_test_accuracy": _spearman(losses, [acc[t.number] for t in tied]),
        # beyond exact ties: among the best tenth of the trials by score, which validation number orders the test
        # accuracy better (loss: negated, so that higher is better for both)
        "best_tenth": {"n": len(tenth), "spearman_val_score_vs_test": _spearman(
            [score(t) if up else -score(t) for t in tenth], tenth_acc),
            "spearman_minus_val_loss_vs_test": _spearman([-rank(t, up)[1] for t in tenth], tenth_acc)},
    }, indent=2))


if __name__ == "__main__":
    main()
