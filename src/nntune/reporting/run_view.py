"""A run directory read once into what the report's sections need: result, config, the study's trials, curves.

Kept apart from the HTML so each section asks the view for data and never opens files or the study itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from nntune.artifacts import read_result
from nntune.config import RunConfig, build_config
from nntune.search.objectives import is_multi, score
from nntune.storage import load_recorded_study


@dataclass
class Trial:
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    attrs: dict[str, Any]


@dataclass
class RunView:
    """What the report needs from a run directory, for a search (``tune``) or a single run (``train``)."""

    directory: Path
    result: dict
    kind: str
    config: RunConfig
    task: str
    metric: str
    trials: list[Trial] = field(default_factory=list)
    maximize: bool = True
    study: Any = None  # the optuna.Study of a search, opened once

    @property
    def complete(self) -> list[Trial]:
        return [t for t in self.trials if t.state == "COMPLETE" and t.value is not None and math.isfinite(t.value)]

    @property
    def best_trial(self) -> Trial | None:
        number = self.result.get("best_trial")
        return next((t for t in self.trials if t.number == number), None)

    def history(self) -> tuple[list[dict], int, int, str]:
        """Learning curves of the best model: (history, best epoch, stopped epoch, stop reason)."""
        if self.kind == "train":
            r = self.result
            return r["history"], r["best_epoch"], r["stopped_epoch"], r["stop_reason"]
        t = self.best_trial
        if t is None:
            return [], 0, 0, ""
        a = t.attrs
        return a.get("history", []), a.get("best_epoch", 0), a.get("stopped_epoch", 0), a.get("stop_reason", "")

    def findings(self) -> list[dict]:
        if self.kind == "train":
            return self.result.get("findings", [])
        t = self.best_trial
        return (t.attrs.get("findings", []) if t else []) + self.result.get("final", {}).get("findings", [])

    def model_summary(self) -> dict:
        return self.result["model"] if self.kind == "train" else self.result["final"]["model"]

    def groups(self, key: str) -> dict[str, list[float]]:
        """The complete trials' values grouped by a categorical parameter's value."""
        groups: dict[str, list[float]] = {}
        for t in self.complete:
            value = t.params.get(key)
            if value is None:
                continue
            groups.setdefault(str(value), []).append(t.value)
        return groups

    def series(self, keys_by_family: dict[str, str]) -> dict[str, tuple[list[float], list[float]]]:
        """(parameter, value) points of the complete trials, one series per model family and its parameter key."""
        out: dict[str, tuple[list[float], list[float]]] = {}
        for t in self.complete:
            for family, key in keys_by_family.items():
                fam = t.params.get("model.family", self.config.model.family)
                if fam == family and key in t.params:
                    xs, ys = out.setdefault(f"{family}: {key.split('.')[-1]}", ([], []))
                    xs.append(t.params[key])
                    ys.append(t.value)
        return out

    def importances(self) -> dict[str, float]:
        """fANOVA hyper-parameter importances for the score; empty with fewer than 4 complete trials."""
        if len(self.complete) < 4:
            return {}
        try:
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            target = score if is_multi(self.study) else None  # importance for the score
            return dict(optuna.importance.get_param_importances(self.study, evaluator=evaluator, target=target))
        except (ValueError, RuntimeError):  # too few trials or a degenerate space
            return {}


def load_run(directory: str | Path) -> RunView:
    """Read a run directory written by ``nntune train`` or ``nntune tune``."""
    directory = Path(directory)
    path = directory / "result.json"
    result = read_result(directory)
    kind = "tune" if "study" in result else "train"
    config = build_config(result["config"] if kind == "train" else result["final"]["config"], where=str(path))
    task = result["data"]["task"]
    if kind == "tune":  # the study's objective, e.g. accuracy, or loss (MSE) for regression
        metric = result["study"]["objective"].removeprefix("val_")
    else:
        metric = "accuracy" if task == "classification" else "mae"
    view = RunView(directory, result, kind, config, task, metric)
    if kind == "tune":
        view.study = load_recorded_study(result["study"])
        view.maximize = result["study"]["direction"] == "maximize"
        view.trials = [Trial(t.number, t.state.name, score(t), dict(t.params), dict(t.user_attrs))
                       for t in view.study.get_trials(deepcopy=False)]
    return view
