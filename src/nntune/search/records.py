"""What a finished search writes for people and scripts: the trials table (``trials.csv``) and the Pareto front's
configurations (``pareto/trial_N.yaml``)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import optuna

from nntune import atomic
from nntune.config import build_config, save_config
from nntune.search.objectives import pareto, score


def save_pareto(study: optuna.Study, out: Path) -> list[dict]:
    """Each Pareto-optimal trial's config as ``OUT/pareto/trial_N.yaml`` (``nntune train --config`` reproduces that
    point) and its objective values, best score first."""
    names = study.user_attrs.get("objectives", ["score"])
    points = []
    for t in pareto(study):
        path = out / "pareto" / f"trial_{t.number}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_config(build_config(t.user_attrs["config"], where=f"trial {t.number}"), path)
        points.append({"trial": t.number, "values": dict(zip(names, t.values)), "settings": t.params,
                       "latency_ms": t.user_attrs.get("latency_ms"), "config": str(path)})
    return points


def trials_table(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, params, seconds, fail reason (also written as trials.csv)."""
    rows = []
    extra_names = study.user_attrs.get("objectives", ["score"])[1:]  # one storage read, not one per trial
    for t in study.get_trials(deepcopy=False):
        extra = dict(zip(extra_names, (t.values or [])[1:]))
        rows.append({"number": t.number, "state": t.state.name, "value": score(t), **extra,
                     "seconds": t.user_attrs.get("seconds"), "best_epoch": t.user_attrs.get("best_epoch"),
                     "stop_reason": t.user_attrs.get("stop_reason"), "fail_reason": t.user_attrs.get("fail_reason"),
                     **{f"params.{k}": v for k, v in t.params.items()}})
    return rows


def write_trials_csv(study: optuna.Study, path: Path) -> None:
    """:func:`trials_table` as CSV, replaced atomically."""
    rows = trials_table(study)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with atomic.replacing(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
