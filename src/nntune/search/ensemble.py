"""Ensembles: the chosen configuration's seeds as the final model when together they validate better than they do
alone on average (:func:`seed_ensemble`), joined by the other finalists' models when that lowers the validation loss
(:func:`finalist_pool`), and the top-k trials' averaged predictions on the test split, for reference
(:func:`ensemble_test`)."""

from __future__ import annotations

import statistics
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial
from torch import nn

from nntune import artifacts
from nntune.config import ModelConfig, RunConfig
from nntune.models.ensemble import Ensemble
from nntune.search.objectives import ranked
from nntune.training.metrics import compute_metrics, make_loss, model_metrics
from nntune.training.monitor import is_improvement, monitor_mode
from nntune.training.pipeline import PreparedData


def seed_ensemble(trial: FrozenTrial, cfg: RunConfig, own: nn.Module, others: list[nn.Module],
                  data: PreparedData, monitor: str) -> tuple[Ensemble, dict]:
    """The chosen trial's model (``own``, of config ``cfg``) and its configuration's other seeds as one
    :class:`Ensemble`, and how each scored on the validation split: ``better`` when the ensemble beats the mean of
    its members alone, i.e. the one model it replaces, a seed of the same configuration, whose expected score that
    mean estimates (the best member's is optimistic by selection). With a convex loss (regression's squared error)
    the ensemble never scores worse than that mean, so there the rule takes it unless it ties. The test split is not
    looked at."""
    task, key = data.dataset.task, monitor.removeprefix("val_")
    loss = make_loss(task, cfg.train.label_smoothing)
    members = [m.cpu() for m in (own, *others)]
    ensemble = Ensemble(members, task == "classification")

    alone = [model_metrics(m, data.x_val, data.y_val, task, loss)[key] for m in members]
    metrics = model_metrics(ensemble, data.x_val, data.y_val, task, loss)
    together, one = metrics[key], statistics.fmean(alone)
    return ensemble, {"trial": trial.number, "size": len(members), "monitor": monitor, "members": alone,
                      "ensemble": together, "loss": metrics["loss"],
                      "better": is_improvement(together, one, monitor_mode(monitor))}


def finalist_pool(seeds: Ensemble, seeds_loss: float, cfg: RunConfig,
                  others: list[tuple[int, ModelConfig, list[nn.Module]]], data: PreparedData,
                  monitor: str) -> tuple[Ensemble, dict]:
    """The seed ensemble ``seeds`` of ``cfg``'s architecture (validation loss ``seeds_loss``, as
    :func:`seed_ensemble` measured it) together with the other finalists' models (``others``: trial number, model
    config, models; all on the same scaled inputs) as one ensemble, member for member, and how it scored on
    validation: ``taken`` when the pool's loss is lower. The loss rather than the monitored accuracy:
    a proper score that sees each sample's confidence, where accuracy on a few hundred samples moves in steps of one
    sample; and the chosen configuration won the finalists' comparison on this split, so the pool has to beat its
    seeds where they look their best. Measured on the 10-minute searches in docs/benchmarks.md."""
    task = data.dataset.task
    loss = make_loss(task, cfg.train.label_smoothing)
    specs = [cfg.model] * len(seeds.members) + [spec for _, spec, models in others for _ in models]
    members = [*seeds.members, *(m.cpu() for _, _, models in others for m in models)]
    pool = Ensemble(members, task == "classification", specs)
    after = model_metrics(pool, data.x_val, data.y_val, task, loss)
    return pool, {"trials": [number for number, _, models in others if models], "size": len(members),
                  "loss": after["loss"], "seeds_loss": seeds_loss, "monitor": monitor,
                  "score": after[monitor.removeprefix("val_")], "taken": after["loss"] < seeds_loss}


def ensemble_test(study: optuna.Study, trials_dir: Path, data: PreparedData, k: int) -> dict | None:
    """Average the top-k complete trials' predictions (probabilities for classification) on the test split.

    Only trials whose weights are under ``trials_dir`` take part (a worker on another machine keeps its own).
    """
    complete = [t for t in ranked(study) if (trials_dir / str(t.number)).is_dir()]
    if k < 2 or len(complete) < 2:
        return None
    top = complete[:k]
    task = data.dataset.task
    raw, y = data.dataset.x[data.split.test], data.dataset.y[data.split.test]
    preds = []
    for t in top:
        art = artifacts.load(trials_dir / str(t.number))
        out = art.outputs(raw)
        preds.append(torch.softmax(out, dim=1) if task == "classification" else out)
    mean = torch.stack(preds).mean(0)
    if task == "classification":
        metrics = {"accuracy": float((mean.argmax(1) == y).float().mean()),
                   "loss": float(torch.nn.functional.nll_loss(mean.clamp_min(1e-12).log(), y))}
    else:
        metrics = compute_metrics(mean, y, "regression")
    return {"k": len(top), "trials": [t.number for t in top], "test": metrics}
