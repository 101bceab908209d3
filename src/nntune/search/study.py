"""Run a search: an Optuna study over the search space, with pruning, persistent storage and a final model.

Optuna does the sampling, pruning, storage and multi-worker coordination (any number of ``nntune worker`` processes
may share one study through its storage URL; there is no scheduler of our own). SQLite is the default storage, in
the run directory. Heartbeats mark a trial left RUNNING by a crashed process as FAILED, and its configuration is
retried once. ``--trials N`` counts finished (complete or pruned) trials in the study, so a resumed search runs only
what is left.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from nntune import artifacts
from nntune.config import RunConfig, apply_overrides, build_config, save_config
from nntune.data.scalers import resolve_method
from nntune.errors import ConfigError, NNTuneError
from nntune.models.inspect import summary
from nntune.search.ensemble import ensemble_test
from nntune.search.progress import LiveTrials
from nntune.search.space import Param, resolve_space, sample
from nntune.storage import make_storage
from nntune.training.callbacks import Callback, StopAtEpoch
from nntune.training.diagnostics import diagnose
from nntune.training.pipeline import PreparedData, fit_model, prepare_data, resolve_lr
from nntune.training.trainer import compute_metrics, make_loss

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def parse_duration(text: str | float | None) -> float | None:
    """``90``, ``90s``, ``10m``, ``1.5h`` -> seconds."""
    if text is None or isinstance(text, (int, float)):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m:
        raise ConfigError(f"--timeout: expected a duration like 90s, 10m or 1h, got {text!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def objective_spec(task: str) -> tuple[str, str]:
    """(monitored history key, study direction) for a task."""
    return ("val_accuracy", "maximize") if task == "classification" else ("val_loss", "minimize")


def make_sampler(name: str, seed: int, params: list[Param]) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=5)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler({p.key: p.grid_values() for p in params if p.kind != "fixed"}, seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise ConfigError(f"search.sampler: unknown sampler {name!r}")


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=2, max_resource=max_epochs)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"search.pruner: unknown pruner {name!r}")


class OptunaPruning(Callback):
    """Reports the monitored value each epoch and stops training when Optuna's pruner says so."""

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        self.trial, self.monitor, self.pruned = trial, monitor, False

    def on_epoch_end(self, trainer, epoch: int, logs: dict[str, float]) -> None:
        value = logs[self.monitor]
        if not math.isfinite(value):
            return
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self.pruned = True
            trainer.stop(f"pruned at epoch {epoch}")


@dataclass
class Search:
    """Everything a worker needs to run trials of one study."""

    cfg: RunConfig
    out: Path
    params: list[Param]
    data_by_scaler: dict[str, PreparedData] = field(default_factory=dict)
    base_data: PreparedData | None = None
    lr_find: dict | None = None

    @property
    def task(self) -> str:
        return self.base_data.dataset.task

    def data_for(self, cfg: RunConfig) -> PreparedData:
        """The split scaled as ``cfg`` asks, prepared once per (resolved) scaler method."""
        ds = self.base_data.dataset
        method = resolve_method(cfg.preprocess.scaler, ds.kind)
        if method not in self.data_by_scaler:
            self.data_by_scaler[method] = prepare_data(cfg, ds)
        return self.data_by_scaler[method]

    def objective(self, trial: optuna.Trial) -> float:
        monitor, direction = objective_spec(self.task)
        trial_cfg, values = sample(trial, self.params, self.cfg)
        trial_cfg = apply_overrides(trial_cfg, {"train.epochs": self.cfg.search.epochs, "train.lr_auto": False})
        trial.set_user_attr("config", trial_cfg.to_dict())
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        data = self.data_for(trial_cfg)
        pruning = OptunaPruning(trial, monitor)
        started = time.perf_counter()
        try:
            model, _, fit = fit_model(trial_cfg, data, [pruning])
        except (NNTuneError, torch.OutOfMemoryError) as err:
            trial.set_user_attr("fail_reason", f"{err.__class__.__name__}: {err}")
            raise
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 3))
        trial.set_user_attr("best_epoch", fit.best_epoch)
        trial.set_user_attr("stop_reason", fit.stop_reason)
        trial.set_user_attr("stopped_epoch", fit.stopped_epoch)
        trial.set_user_attr("history", [{k: v for k, v in h.items() if k != "grad_norms"} for h in fit.history])
        findings = diagnose(fit.history, model, data.x_val, fit.initial_val_loss)
        trial.set_user_attr("findings", [f.to_dict() for f in findings])
        if fit.stop_reason.startswith("non-finite"):
            trial.set_user_attr("fail_reason", fit.stop_reason)
            return float("nan")  # Optuna records a NaN objective as FAIL; the search goes on
        if pruning.pruned:
            raise optuna.TrialPruned(fit.stop_reason)
        artifacts.save(self.out / "trials" / str(trial.number), model, trial_cfg, data.scaler, data.dataset.meta())
        trial.set_user_attr("val", fit.best_val)
        return fit.best[monitor]


def prepare_search(cfg: RunConfig, out: Path) -> Search:
    """Load the data once, run the LR range test when asked, and resolve the search space."""
    data = prepare_data(cfg)
    lr_info = None
    if cfg.train.lr_auto:
        _, found = resolve_lr(cfg, data)
        lr_info = found.to_dict()
        center = found.suggestion
    else:
        center = None
    params = resolve_space(cfg, data.dataset.kind, data.dataset.input_shape, center)
    search = Search(cfg, out, params, base_data=data, lr_find=lr_info)
    search.data_by_scaler[data.scaler.method] = data
    return search


def open_study(cfg: RunConfig, out: Path, direction: str, params: list[Param], resume: bool,
               worker: bool = False) -> optuna.Study:
    """Create or load the study; an existing one with trials needs ``resume``. Workers get their own seeds."""
    url = cfg.search.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    storage = make_storage(url, cfg.search.heartbeat)
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    name = cfg.search.study_name
    if name in existing and not resume and existing[name].n_trials > 0:
        raise ConfigError(f"study {name!r} already has {existing[name].n_trials} trials in {url}; pass --resume to "
                          "continue it or --study-name NEW for a new one")
    # a fresh study is reproducible from cfg.seed; a resumed study or an extra worker must not replay the same
    # proposals, so its sampler seed also depends on the trials already there and on the process
    n_before = existing[name].n_trials if name in existing else 0
    seed = cfg.seed if (n_before == 0 and not worker) else cfg.seed + 7919 * n_before + os.getpid()
    study = optuna.create_study(
        study_name=name, storage=storage, direction=direction, load_if_exists=True,
        sampler=make_sampler(cfg.search.sampler, seed % 2**31, params),
        pruner=make_pruner(cfg.search.pruner, cfg.search.epochs),
    )
    if study.direction.name.lower() != direction:
        raise ConfigError(f"study {name!r} in {url} optimizes {study.direction.name.lower()}, this task needs "
                          f"{direction}")
    study.set_user_attr("storage", url)
    return study


def count(study: optuna.Study, states: tuple = FINISHED) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def run_trials(search: Search, study: optuna.Study, trials: int, timeout: float | None,
               progress: bool = False) -> bool:
    """Run trials until the study has ``trials`` finished ones or the timeout passes (with a live table when
    ``progress``). Returns False when Ctrl-C ended it early."""
    optuna.storages.fail_stale_trials(study)
    deadline = None if timeout is None else time.monotonic() + timeout
    live = LiveTrials(study, trials) if progress else None
    try:
        if live:
            live.__enter__()
        while (remaining := max(0, trials - count(study))) > 0:  # failed (and retried) trials do not count
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            before = count(study)
            study.optimize(search.objective, n_trials=remaining, timeout=left, callbacks=[live] if live else None,
                           catch=(NNTuneError, torch.OutOfMemoryError), gc_after_trial=False)
            if count(study) == before and (deadline is None or time.monotonic() < deadline):
                failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                reason = failed[-1].user_attrs.get("fail_reason", "see the log") if failed else "unknown"
                raise NNTuneError(f"every one of the last {remaining} trials failed (last: {reason}); fix the "
                                  "config or search space and --resume")
    except KeyboardInterrupt:
        return False
    finally:
        if live:
            live.__exit__(None, None, None)
    return True


def final_fit(search: Search, study: optuna.Study) -> dict:
    """Retrain the best configuration on train+val for its best epoch count (or keep the best trial's weights),
    evaluate the test split once, and save ``best/``."""
    best = study.best_trial
    cfg = build_config(best.user_attrs["config"], where=f"trial {best.number}")
    data = search.data_for(cfg)
    out = search.out
    if search.cfg.search.final == "retrain":
        # the trial's epoch count stays the schedule's horizon, so the LR follows the same path up to best_epoch
        epochs = max(1, int(best.user_attrs.get("best_epoch") or cfg.train.epochs))
        final_cfg = apply_overrides(cfg, {"train.early_stopping.enabled": False})
        merged = _train_plus_val(final_cfg, data)
        model, trainer, fit = fit_model(final_cfg, merged, [StopAtEpoch(epochs)])
        test = trainer.evaluate(merged.x_test, merged.y_test)
        scaler, history, x_val = merged.scaler, fit.history, merged.x_val
    else:
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
            "findings": [f.to_dict() for f in findings], "model": summary(model, data.dataset.input_shape).to_dict(),
            "mode": search.cfg.search.final, "epochs": epochs}


def _train_plus_val(cfg: RunConfig, data: PreparedData) -> PreparedData:
    """The same split with train+val as the training set; the scaler is refitted on it (validation is reported for
    reference only: no choice is made on it any more)."""
    from nntune.data.splits import Split

    split = Split(torch.cat([data.split.train, data.split.val]).sort().values, data.split.val, data.split.test)
    return prepare_data(cfg, data.dataset, split=split)


def trials_table(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, params, seconds, fail reason (also written as trials.csv)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "seconds": t.user_attrs.get("seconds"), "best_epoch": t.user_attrs.get("best_epoch"),
                     "stop_reason": t.user_attrs.get("stop_reason"), "fail_reason": t.user_attrs.get("fail_reason"),
                     **{f"params.{k}": v for k, v in t.params.items()}})
    return rows


def write_trials_csv(study: optuna.Study, path: Path) -> None:
    import csv

    rows = trials_table(study)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def tune(cfg: RunConfig, out: str | Path, resume: bool = False, progress: bool = False) -> dict:
    """Search, then fit the final model and evaluate it on the test split once. Returns ``result.json``'s content."""
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    search = prepare_search(cfg, out)
    monitor, direction = objective_spec(search.task)
    study = open_study(cfg, out, direction, search.params, resume)
    completed = run_trials(search, study, cfg.search.trials, cfg.search.timeout, progress)
    write_trials_csv(study, out / "trials.csv")
    n = {s.name.lower(): count(study, (s,)) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    if n["complete"] == 0:
        raise NNTuneError(f"no trial completed ({n['pruned']} pruned, {n['fail']} failed); see {out / 'trials.csv'}")
    final = final_fit(search, study)
    best = study.best_trial
    result = {
        "study": {"name": study.study_name, "storage": study.user_attrs.get("storage"), "direction": direction,
                  "objective": monitor, "sampler": cfg.search.sampler, "pruner": cfg.search.pruner},
        "best_trial": best.number,
        "best_params": best.params,
        "best_value": best.value,
        "val": best.user_attrs.get("val", {}),
        "test": final["test"],
        "final": final,
        "trials": n,
        "interrupted": not completed,
        "lr_find": search.lr_find,
        "data": search.base_data.describe(),
        "seconds": time.perf_counter() - started,
    }
    if cfg.search.ensemble:
        result["ensemble"] = ensemble_test(study, out / "trials", search.base_data, cfg.search.ensemble)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result
