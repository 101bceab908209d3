"""Top-k ensembles: average the predictions of the best complete trials on the test split."""

from __future__ import annotations

from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from nntune import artifacts
from nntune.search.objectives import maximize, score
from nntune.training.pipeline import PreparedData
from nntune.training.metrics import compute_metrics


def ensemble_test(study: optuna.Study, trials_dir: Path, data: PreparedData, k: int) -> dict | None:
    """Average the top-k complete trials' predictions (probabilities for classification) on the test split.

    Only trials whose weights are under ``trials_dir`` take part (a worker on another machine keeps its own).
    """
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if (trials_dir / str(t.number)).is_dir()]
    if k < 2 or len(complete) < 2:
        return None
    top = sorted(complete, key=score, reverse=maximize(study))[:k]
    task = data.dataset.task
    raw, y = data.dataset.x[data.split.test], data.dataset.y[data.split.test]
    preds = []
    for t in top:
        art = artifacts.load(trials_dir / str(t.number))
        preds.append(art.predict_proba(raw) if task == "classification" else art.predict_raw(raw))
    mean = torch.stack(preds).mean(0)
    if task == "classification":
        metrics = {"accuracy": float((mean.argmax(1) == y).float().mean()),
                   "loss": float(torch.nn.functional.nll_loss(mean.clamp_min(1e-12).log(), y))}
    else:
        metrics = compute_metrics(mean, y, "regression")
    return {"k": len(top), "trials": [t.number for t in top], "test": metrics}
