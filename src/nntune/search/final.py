"""The final fit: the chosen configuration retrained on train+val (or the chosen trial's weights kept), tested once
on the test split, and saved as ``best/``."""

from __future__ import annotations

import math

import optuna
import torch

from nntune import artifacts
from nntune.config import RunConfig, apply_overrides, build_config, save_config
from nntune.data.splits import Split
from nntune.models.inspect import summary
from nntune.search.budget import Budget
from nntune.search.finalists import final_cost
from nntune.search.setup import Search
from nntune.training.callbacks import Deadline, StopAtEpoch
from nntune.training.diagnostics import diagnose
from nntune.training.finetune import describe
from nntune.training.metrics import compute_metrics, make_loss
from nntune.training.pipeline import PreparedData, fit_model, prepare_data


def final_fit(search: Search, best: optuna.trial.FrozenTrial, budget: Budget | None = None) -> dict:
    """Retrain the chosen trial's configuration on train+val for its best epoch count (or keep the trial's weights),
    evaluate the test split once, and save ``best/``. Under a time budget the retrain has a deadline: when its
    estimated time does not fit, or it reaches the deadline, the chosen trial's own weights are the final model
    (when this process has them), and ``budget.cut`` says so."""
    cfg = build_config(best.user_attrs["config"], where=f"trial {best.number}")
    data = search.data_for(cfg)
    out = search.out
    mode = search.cfg.search.final
    own = (out / "trials" / str(best.number)).is_dir()  # another worker's trial has its weights elsewhere
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
        test = compute_metrics(art.predict_raw(data.dataset.x[data.split.test]), data.y_test, search.task,
                               make_loss(search.task, cfg.train.label_smoothing))
        x_val = data.x_val
    artifacts.save(out / "best", model, final_cfg, scaler, data.dataset.meta())
    save_config(final_cfg, out / "best_config.yaml")
    findings = diagnose(history, model, x_val) if history else []
    return {"config": final_cfg.to_dict(), "test": test, "history": history,
            "finetune": describe(final_cfg, data.dataset),
            "findings": [f.to_dict() for f in findings], "model": summary(model, data.dataset.input_shape).to_dict(),
            "mode": mode, "epochs": epochs}


def _train_plus_val(cfg: RunConfig, data: PreparedData) -> PreparedData:
    """The same split with train+val as the training set; the scaler is refitted on it (validation is reported for
    reference only: no choice is made on it any more)."""
    split = Split(torch.cat([data.split.train, data.split.val]).sort().values, data.split.val, data.split.test)
    return prepare_data(cfg, data.dataset, split=split)
