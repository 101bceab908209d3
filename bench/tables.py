"""Table encodings, measured (issue on users' own data): one-hot against frequency rank for a many-valued category,
median against mean imputation, on a generated table where both kinds of column and the gaps matter.

The table (``--rows``, default 3,000; seeded): four numeric columns (two with 15 % of values missing at random, one
missing when its value is high, so a missing indicator carries signal), a 5-valued category and a ``--levels``-valued (default 60) "city"
whose levels each shift the class score by their own amount (not in frequency order); a binary target from a noisy
linear score. Each arm trains nntune's default MLP (``train_artifact``, 40 epochs, LR 3e-3) over ``--seeds`` and
reports the held-out test accuracy. Arms: ``onehot`` (the city one-hot), ``frequency``
(``data.max_onehot`` 8: the city as its frequency rank), ``onehot_mean`` (mean imputation). Prints JSON.

    python bench/tables.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics

import numpy as np
import torch

from nntune.config import RunConfig, apply_overrides
from nntune.data.sources import Dataset
from nntune.data.tabular import table_features
from nntune.training.pipeline import train_artifact

ARMS = {"onehot": {"data.max_onehot": 10_000}, "frequency": {"data.max_onehot": 8},
        "onehot_mean": {"data.max_onehot": 10_000, "preprocess.impute": "mean"}}


def table(rows: int, seed: int, levels: int = 60) -> tuple[list[str], list[list], np.ndarray]:
    """(column names, columns of raw cells, binary target) as described in the module docstring."""
    rng = np.random.default_rng(seed)
    num = rng.normal(size=(rows, 4))
    colour = rng.integers(0, 5, rows)
    p_city = rng.dirichlet(np.ones(levels))
    city = rng.choice(levels, rows, p=p_city)
    city_effect = rng.normal(0, 1.2, levels)
    score = num @ np.array([1.0, -0.8, 0.6, 0.0]) + np.array([-1, -0.5, 0, 0.5, 1])[colour] + city_effect[city]
    score += 0.8 * (num[:, 2] > 0.8)  # what a missing value of column c hides
    y = (score + rng.normal(0, 0.5, rows) > 0).astype(np.int64)
    cells = num.astype(object)
    cells[rng.random(rows) < 0.15, 0] = None
    cells[rng.random(rows) < 0.15, 1] = None
    cells[num[:, 2] > 0.8, 2] = None
    columns = [cells[:, j].tolist() for j in range(4)] + [[f"c{k}" for k in colour], [f"city{k}" for k in city]]
    return ["a", "b", "c", "d", "colour", "city"], columns, y


def run(arm: str, seed: int, rows: int, levels: int) -> float:
    names, columns, y = table(rows, seed, levels)
    cfg = apply_overrides(RunConfig(), {"seed": seed, "train.epochs": 40, "train.lr": 3e-3, **ARMS[arm]})
    x, schema = table_features("bench", names, columns, str, max_onehot=cfg.data.max_onehot)
    ds = Dataset("bench", x, torch.tensor(y), "classification", ["0", "1"], names, table=schema)
    _, result = train_artifact(cfg, ds)
    return float(result["test"]["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--levels", type=int, default=60)
    args = parser.parse_args()
    scores = {arm: [run(arm, s, args.rows, args.levels) for s in args.seeds] for arm in ARMS}
    print(json.dumps({"machine": platform.machine(), "rows": args.rows, "levels": args.levels, "seeds": args.seeds,
                      "test_accuracy": scores,
                      "mean": {arm: round(statistics.mean(v), 4) for arm, v in scores.items()}}, indent=2))


if __name__ == "__main__":
    main()
