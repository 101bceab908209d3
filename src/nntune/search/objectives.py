"""What a study optimizes: the task's validation score alone, or with the model's size and latency as further
objectives (a multi-objective study whose answer is a Pareto front).

Optuna's ``FrozenTrial.value``, ``Study.direction`` and ``Study.best_trial`` exist for single-objective studies
only; everything in nntune reads a study through these helpers, so both kinds work everywhere (the score is always
the first objective).
"""

from __future__ import annotations

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial


def score(trial: FrozenTrial) -> float | None:
    """The trial's score (its first objective), or None when it has none."""
    return trial.values[0] if trial.values else None


def maximize(study: optuna.Study) -> bool:
    return study.directions[0] == StudyDirection.MAXIMIZE


def is_multi(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def pareto(study: optuna.Study) -> list[FrozenTrial]:
    """The non-dominated complete trials (every trial's values count), by score, best first."""
    front = study.best_trials if is_multi(study) else [study.best_trial]
    return sorted(front, key=lambda t: score(t), reverse=maximize(study))


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The best trial by score: of a multi-objective study, the Pareto point with the best score."""
    if not is_multi(study):
        return study.best_trial
    front = pareto(study)
    if not front:
        raise ValueError("no complete trial")
    return front[0]
