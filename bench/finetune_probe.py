"""Head-only fine-tuning against a linear probe on the same frozen features (issue on users' own data).

The case: the default CNN trained on digits 0-4; then 30 samples per class of digits 5-9 (150 images, which the
fine-tuning run splits 70/15/15 as any run does) and the other samples of 5-9 held out. Arms, all tested on the
held-out samples: ``finetune`` (``nntune train --init-from pre/best --freeze-all-but-last 1`` with the defaults, or
with ``--set key=value`` overrides), ``probe`` (scikit-learn's LogisticRegression on the frozen network's features,
fitted on the same fine-tuning training split) and ``scratch`` (the default CNN trained on the 150 alone). Prints
JSON per seed and the means. Target: ``finetune`` within 2 points of ``probe``.

    python bench/finetune_probe.py --seeds 0 1 2 [--set train.lr=0.03]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml
from sklearn.linear_model import LogisticRegression

from nntune import artifacts
from nntune.config import RunConfig, apply_overrides
from nntune.data.sources import Dataset, load_dataset
from nntune.data.splits import split_dataset
from nntune.training.pipeline import train

PER_CLASS = 30


def subsets(seed: int) -> tuple[Dataset, Dataset, Dataset]:
    """(digits 0-4, 30 per class of digits 5-9, the other samples of 5-9), targets of 5-9 renumbered 0-4."""
    ds = load_dataset("digits")
    g = np.random.default_rng(seed)
    low = ds.y < 5
    pre = Dataset("digits0-4", ds.x[low], ds.y[low], "classification", ds.class_names[:5])
    idx = np.flatnonzero(~low.numpy())
    picked = np.concatenate([g.permutation(idx[ds.y[idx].numpy() == c])[:PER_CLASS] for c in range(5, 10)])
    rest = np.setdiff1d(idx, picked)
    names = ds.class_names[5:]
    few = Dataset("digits5-9-few", ds.x[picked], ds.y[picked] - 5, "classification", names)
    held = Dataset("digits5-9-held", ds.x[rest], ds.y[rest] - 5, "classification", names)
    return pre, few, held


def features(art: artifacts.Artifact, x: torch.Tensor) -> np.ndarray:
    """What the saved model's output layer sees (its input), for raw inputs."""
    head = [m for m in art.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    art.model.eval()
    with torch.no_grad():
        art.model(art.scaler.transform(x))
    hook.remove()
    return seen[0].numpy()


def accuracy(art: artifacts.Artifact, held: Dataset) -> float:
    return float((art.predict_proba(held.x).argmax(1) == held.y.numpy()).mean())


def run(seed: int, overrides: dict) -> dict:
    pre, few, held = subsets(seed)
    with tempfile.TemporaryDirectory() as tmp:
        base = apply_overrides(RunConfig(), {"seed": seed, "model.family": "cnn"})
        train(base, Path(tmp) / "pre", dataset=pre)
        tuned_cfg = apply_overrides(RunConfig(), {"seed": seed, "finetune.init_from": str(Path(tmp) / "pre" / "best"),
                                                  "finetune.freeze_all_but_last": 1, **overrides})
        result = train(tuned_cfg, Path(tmp) / "ft", dataset=few)
        tuned = artifacts.load(Path(tmp) / "ft" / "best")
        frozen = artifacts.load(Path(tmp) / "pre" / "best")
        split = split_dataset(few, seed=seed)  # the fine-tuning run's own split (same seed)
        probe = LogisticRegression(max_iter=5000).fit(features(frozen, few.x[split.train]), few.y[split.train])
        probe_acc = float((probe.predict(features(frozen, held.x)) == held.y.numpy()).mean())
        train(base, Path(tmp) / "scratch", dataset=few)
        scratch = artifacts.load(Path(tmp) / "scratch" / "best")
        return {"seed": seed, "finetune": accuracy(tuned, held), "probe": probe_acc, "scratch": accuracy(scratch, held),
                "finetune_lr": result["config"]["train"]["lr"], "finetune_epochs": len(result["history"]),
                "held_out": len(held.y)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], help="a fine-tuning override, key=value")
    args = parser.parse_args()
    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    rows = [run(s, overrides) for s in args.seeds]
    for row in rows:
        print(json.dumps(row), flush=True)
    print(json.dumps({"machine": platform.node(), "torch": torch.__version__, "overrides": overrides,
                      "mean": {k: round(statistics.mean(r[k] for r in rows), 4)
                               for k in ("finetune", "probe", "scratch")}}))


if __name__ == "__main__":
    main()
