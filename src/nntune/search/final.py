"""The final fit: the chosen configuration retrained on train+val, the chosen trial's weights kept, or the chosen
configuration's seeds (the trial and its finalist re-runs) as one ensemble; tested once on the test split and saved
as ``best/``.

``search.final`` ``auto`` (the default) takes the seed ensemble when it scores better on validation than its
members do alone on average (:func:`nntune.search.ensemble.seed_ensemble`), and retrains otherwise: the ensemble's
members trained on the training split only, so it has to beat the single model it would replace on the data it can
be judged on; the retrain's gain from the extra validation rows cannot be measured (no held-out data is left). Once
the ensemble is the final model it grows to ``search.final_seeds`` seeds in the time left, which the retrain would
have taken (:func:`nntune.search.finalists.more_seeds`), since an ensemble of more seeds is expected to score at
least as well (measured on mnist5k in docs/benchmarks.md).
bench/final_model.py compares the two on the same searches. With ``search.final_pool`` the other finalists' models
(their trials' weights and full seed runs, scaled like the chosen configuration) then join the seed ensemble when
together they have the lower validation loss (:func:`nntune.search.ensemble.finalist_pool`)."""

from __future__ import annotations

import math

import optuna
import torch
from torch import nn

from nntune import artifacts
from nntune.config import ModelConfig, RunConfig, apply_overrides, build_config, save_config
from nntune.data.scalers import Scaler
from nntune.data.splits import Split
from nntune.models.inspect import summary
from nntune.search.budget import Budget
from nntune.search.ensemble import finalist_pool, seed_ensemble
from nntune.search.finalists import final_cost, more_seeds
from nntune.search.setup import Search
from nntune.training.callbacks import Deadline, StopAtEpoch
from nntune.training.context import preprocessing_key
from nntune.training.diagnostics import diagnose
from nntune.training.finetune import describe
from nntune.training.metrics import compute_metrics, make_loss, model_metrics
from nntune.training.pipeline import PreparedData, fit_model, prepare_data


def final_fit(search: Search, best: optuna.trial.FrozenTrial, budget: Budget | None = None,
              seeds: list[nn.Module] | None = None, seed_seconds: list[float] | None = None,
              others: list[tuple[optuna.trial.FrozenTrial, list[nn.Module]]] | None = None) -> dict:
    """Retrain the chosen trial's configuration on train+val for its best epoch count, keep the trial's weights, or
    ensemble them with ``seeds`` (its configuration trained with other seeds, which took ``seed_seconds`` each; more
    seeds join while the time left fits them, then the ``others`` finalists' trials and seed models when they lower
    the validation loss), as ``search.final`` says; evaluate
    the test split once, and save ``best/``. Under a time budget the retrain has a deadline: when its estimated time
    does not fit, or it reaches the deadline, the chosen trial's own weights are the final model (when this process
    has them), and ``budget.cut`` says so."""
    cfg = build_config(best.user_attrs["config"], where=f"trial {best.number}")
    data = search.data_for(cfg)
    out = search.out
    mode = search.cfg.search.final
    own = (out / "trials" / str(best.number)).is_dir()  # another worker's trial has its weights elsewhere
    record = None
    if mode in ("auto", "ensemble") and seeds and own:
        trial_art = artifacts.load(out / "trials" / str(best.number))
        ensemble, record = seed_ensemble(best, cfg, trial_art.model, seeds, data, search.monitor)
        if mode == "ensemble" or record["better"]:
            more, why = more_seeds(search, best, record["size"], budget, seed_seconds)
            if more:
                chosen_at = record
                ensemble, record = seed_ensemble(best, cfg, trial_art.model, [*seeds, *more], data, search.monitor)
                record["chosen_at"] = {k: chosen_at[k] for k in ("size", "ensemble", "better")}
            record["grown"] = why
            pool = _pool_members(search, cfg, others or [], data) if search.cfg.search.final_pool else []
            if pool:
                pooled, record["pool"] = finalist_pool(ensemble, record["loss"], cfg, pool, data, search.monitor)
                ensemble = pooled if record["pool"]["taken"] else ensemble
            final = _ensemble_final(search, best, cfg, ensemble, trial_art.scaler, data)
            return {**final, "ensemble": record}
    if mode in ("auto", "ensemble"):
        mode = "retrain"
    if mode == "best_trial" and not own:
        mode = "retrain"
        if budget is not None:
            budget.cut.append(f"final best_trial: trial {best.number}'s weights are with the worker that ran it (no "
                              "shared run directory); its configuration was retrained instead")
    left = budget.finish_left if budget is not None else (lambda: math.inf)
    estimate, room = final_cost(best), left()
    if mode == "retrain" and own and estimate > room:
        mode = "best_trial"
        budget.cut.append(f"final retrain skipped: its estimated {estimate:.0f} s exceed the {max(0.0, room):.0f} s "
                          "left; the chosen trial's weights are the final model")
    if mode == "retrain":
        # the trial's epoch count stays the schedule's horizon, so the LR follows the same path up to best_epoch
        epochs = max(1, int(best.user_attrs.get("best_epoch") or cfg.train.epochs))
        final_cfg = apply_overrides(cfg, {"train.early_stopping.enabled": False})
        merged = _train_plus_val(final_cfg, data)
        run = search.tracker.run("final", {**best.params, "trial": best.number, "epochs": epochs})
        model, trainer, fit = fit_model(final_cfg, merged, [StopAtEpoch(epochs), Deadline(left),
                                                            *([run] if run else [])])
        cut = fit.stop_reason.startswith(Deadline.DEFAULT)
        if cut and budget is not None:
            budget.cut.append(f"final retrain reached the deadline after {len(fit.history)} of {epochs} epochs"
                              + ("; the chosen trial's weights are the final model" if own else ""))
        if cut and own:
            if run:
                run.end("FAIL", {})
            mode = "best_trial"
        else:
            test = trainer.evaluate(merged.x_test, merged.y_test)
            if run:
                run.end("COMPLETE", {f"test_{k}": v for k, v in test.items()})
            scaler, history, x_val = merged.scaler, fit.history, merged.x_val
    if mode == "best_trial":
        art = artifacts.load(out / "trials" / str(best.number))
        final_cfg, model, scaler, history = cfg, art.model, art.scaler, []
        epochs = int(best.user_attrs.get("best_epoch") or cfg.train.epochs)
        test = compute_metrics(art.outputs(data.dataset.x[data.split.test]), data.y_test, search.task,
                               make_loss(search.task, cfg.train.label_smoothing))
        x_val = data.x_val
    artifacts.save(out / "best", model, final_cfg, scaler, data.dataset.meta())
    save_config(final_cfg, out / "best_config.yaml")
    findings = diagnose(history, model, x_val) if history else []
    return {"config": final_cfg.to_dict(), "test": test, "history": history,
            "finetune": describe(final_cfg, data.dataset),
            "findings": [f.to_dict() for f in findings], "model": summary(model, data.dataset.input_shape).to_dict(),
            "mode": mode, "epochs": epochs, "ensemble": record}


def _pool_members(search: Search, cfg: RunConfig, others: list[tuple[optuna.trial.FrozenTrial, list[nn.Module]]],
                  data: PreparedData) -> list[tuple[int, ModelConfig, list[nn.Module]]]:
    """The other finalists' models that may join the chosen configuration's seeds: each one's trial weights (when
    this process has them) and full seed runs, for a finalist whose inputs are scaled like the chosen's."""
    key, pool = preprocessing_key(cfg, data.dataset), []
    for trial, models in others:
        other = build_config(trial.user_attrs["config"], where=f"trial {trial.number}")
        path = search.out / "trials" / str(trial.number)
        if preprocessing_key(other, data.dataset) == key and path.is_dir():
            pool.append((trial.number, other.model, [artifacts.load(path).model, *models]))
    return pool


def _ensemble_final(search: Search, best: optuna.trial.FrozenTrial, cfg: RunConfig, ensemble: nn.Module,
                    scaler: Scaler, data: PreparedData) -> dict:
    """The seed ensemble as the final model: tested once, saved as ``best/``."""
    test = model_metrics(ensemble, data.x_test, data.y_test, search.task,
                         make_loss(search.task, cfg.train.label_smoothing))
    artifacts.save(search.out / "best", ensemble, cfg, scaler, data.dataset.meta())
    save_config(cfg, search.out / "best_config.yaml")
    return {"config": cfg.to_dict(), "test": test, "history": [], "finetune": describe(cfg, data.dataset),
            "findings": [], "model": summary(ensemble, data.dataset.input_shape).to_dict(), "mode": "ensemble",
            "epochs": int(best.user_attrs.get("best_epoch") or cfg.train.epochs)}


def _train_plus_val(cfg: RunConfig, data: PreparedData) -> PreparedData:
    """The same split with train+val as the training set; the scaler is refitted on it (validation is reported for
    reference only: no choice is made on it any more)."""
    split = Split(torch.cat([data.split.train, data.split.val]).sort().values, data.split.val, data.split.test)
    return prepare_data(cfg, data.dataset, split=split)
