"""What a study optimizes: the task's validation score alone, or with the model's size and latency as further
objectives (a multi-objective study whose answer is a Pareto front).

Optuna's ``FrozenTrial.value``, ``Study.direction`` and ``Study.best_trial`` exist for single-objective studies
only; everything in nntune reads a study through these helpers, so both kinds work everywhere (the score is always
the first objective).
"""

from __future__ import annotations

import math

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState


def score(trial: FrozenTrial) -> float | None:
    """The trial's score (its first objective), or None when it has none."""
    return trial.values[0] if trial.values else None


def maximize(study: optuna.Study) -> bool:
    return study.directions[0] == StudyDirection.MAXIMIZE


def rank(trial: FrozenTrial, up: bool) -> tuple[float, float]:
    """Sort key of a complete trial, best first: its score, then its validation loss at its best epoch. On a small
    validation set many trials tie on accuracy (one sample of digits' 270 is 0.4 points; a 10-minute search there
    finishes some 300 trials), and among equals the trial number is no reason to prefer one; the loss is the finer
    measurement of the same validation set."""
    loss = (trial.user_attrs.get("val") or {}).get("loss")
    tie = float(loss) if isinstance(loss, (int, float)) and math.isfinite(loss) else math.inf
    value = score(trial)
    return (-value if up else value, tie)


def is_multi(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def pareto(study: optuna.Study) -> list[FrozenTrial]:
    """The non-dominated complete trials (every trial's values count), best first (see :func:`rank`)."""
    front = study.best_trials if is_multi(study) else [best_trial(study)]
    up = maximize(study)
    return sorted(front, key=lambda t: rank(t, up))


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The best trial by score, ties broken by validation loss (:func:`rank`); of a multi-objective study, the
    Pareto point with the best score. Raises ValueError when no trial is complete."""
    if is_multi(study):
        front = pareto(study)
        if not front:
            raise ValueError("no complete trial")
        return front[0]
    done = ranked(study)
    return done[0] if done else study.best_trial  # Optuna's own error when none is complete


def ranked(study: optuna.Study) -> list[FrozenTrial]:
    """The complete trials with a score, best first (:func:`rank`): the one ordering every choice among trials uses."""
    up = maximize(study)
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if score(t) is not None]
    return sorted(done, key=lambda t: rank(t, up))
