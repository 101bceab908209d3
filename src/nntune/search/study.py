"""Run a search: an Optuna study over the search space, with pruning, persistent storage and a final model.

Optuna does the sampling, pruning, storage and multi-worker coordination (any number of ``nntune worker`` processes
may share one study through its storage URL; there is no scheduler of our own). SQLite is the default storage, in
the run directory. A fresh study starts with nntune's default configuration for each model family that fits the
data, so a search never ends below the defaults. Trials run as populations of one structure
(:mod:`nntune.search.trials`) within a budget of trials and/or time (:mod:`nntune.search.budget`); the best
configurations are re-run with extra seeds before the choice (:mod:`nntune.search.finalists`). Heartbeats mark a
trial left RUNNING by a crashed process as FAILED, and its configuration is retried once. ``--trials N`` counts
finished (complete or pruned) trials in the study, so a resumed search runs only what is left.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from nntune import artifacts, atomic, rundir
from nntune.config import RunConfig, apply_overrides, build_config, save_config
from nntune.data.scalers import resolve_method
from nntune.data.sources import Dataset
from nntune.errors import ConfigError, NNTuneError
from nntune.models.inspect import summary
from nntune.redact import redact
from nntune.search.budget import Budget, count
from nntune.search.ensemble import ensemble_test
from nntune.search.finalists import final_cost, finishing_cost, run_finalists
from nntune.search.objectives import best_trial, is_multi, pareto, score
from nntune.search.space import Param, default_trials, resolve_space, trial_epochs
from nntune.search.trials import Interrupts, run_trials
from nntune.search.warm_start import source_study, warm_trials
from nntune.storage import make_storage
from nntune.tracking import Tracker
from nntune.training.callbacks import Deadline, StopAtEpoch
from nntune.training.diagnostics import diagnose
from nntune.training.finetune import adopt, check_out, describe
from nntune.training.pipeline import (PreparedData, choose_population_size, data_source, fit_model, prepare_data,
                                     resolve_lr, stackable)
from nntune.training.metrics import compute_metrics, make_loss


def parse_duration(text: str | float | None, flag: str = "--timeout") -> float | None:
    """``90``, ``90s``, ``10m``, ``1.5h`` -> seconds; errors name ``flag``."""
    if text is None or isinstance(text, (int, float)):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m:
        raise ConfigError(f"{flag}: expected a duration like 90s, 10m or 1h, got {text!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def objective_spec(task: str) -> tuple[str, str]:
    """(monitored history key, study direction) for a task."""
    return ("val_accuracy", "maximize") if task == "classification" else ("val_loss", "minimize")


class GridSearch(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its ``study.stop()`` after the last point, which only works inside
    ``study.optimize`` (the search loop asks ``is_exhausted`` itself), and able to say how many points no trial has
    started yet (so a population does not re-run a point)."""

    def __init__(self, search_space: dict[str, list], seed: int | None = None) -> None:
        super().__init__(search_space, seed=seed)
        self.points = math.prod(len(v) for v in search_space.values())

    def after_trial(self, study, trial, state, values) -> None:
        return None

    def unstarted(self, study: optuna.Study) -> int:
        started = {t.system_attrs["grid_id"] for t in study.get_trials(deepcopy=False)
                   if "grid_id" in t.system_attrs and t.state != TrialState.FAIL}
        return self.points - len(started)


def make_sampler(name: str, seed: int, params: list[Param]) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=5)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return GridSearch({p.key: p.grid_values() for p in params if p.kind != "fixed"}, seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
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


@dataclass
class Search:
    """Everything a worker needs to run trials of one study."""

    cfg: RunConfig
    out: Path
    params: list[Param]
    base_data: PreparedData
    lr_find: dict | None = None
    data_by_scaler: dict[str, PreparedData] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # population size per model family, measured once
    tracker: Tracker = field(default_factory=Tracker)  # TensorBoard / MLflow logging of trials (none by default)
    interrupts: Interrupts | None = None  # the Ctrl-C record of the running search loop
    fingerprint: dict = field(default_factory=dict)  # the data's identity (nntune.rundir), checked on resume

    @property
    def task(self) -> str:
        return self.base_data.dataset.task

    @property
    def monitor(self) -> str:
        return objective_spec(self.task)[0]

    @property
    def trial_epochs(self) -> int:
        return self.cfg.search.epochs or trial_epochs(len(self.base_data.split.train))

    def data_for(self, cfg: RunConfig) -> PreparedData:
        """The search's split scaled as ``cfg`` asks, prepared once per (resolved) scaler method."""
        ds = self.base_data.dataset
        method = resolve_method(cfg.preprocess.scaler, ds.kind)
        if method not in self.data_by_scaler:
            self.data_by_scaler[method] = prepare_data(cfg, ds, split=self.base_data.split)
        return self.data_by_scaler[method]

    def population_size(self, cfg: RunConfig, seconds: float = math.inf) -> int:
        """Members per population for ``cfg``'s family: ``search.population``, else measured on the first
        configuration of that family (see :func:`nntune.training.pipeline.choose_population_size`) in at most
        ``seconds`` (0: do not measure, 1 until measured); after running out of memory, half the size that did."""
        family, fixed = cfg.model.family, self.cfg.search.population
        if not stackable(cfg):  # a saved starting model or a recurrent network: one at a time (recorded)
            self.sizes.setdefault(family, 1)
            return 1
        if cfg.train.precision == "fp16":  # loss scaling exists for single-model training only
            return 1
        if fixed:
            return min(fixed, self.sizes.get(family, fixed))
        if family not in self.sizes:
            if seconds <= 0:
                return 1
            self.sizes[family] = choose_population_size(cfg, self.data_for(cfg), seconds=seconds)
        return self.sizes[family]

    def shrink_population(self, cfg: RunConfig, tried: int) -> None:
        """After running out of memory with ``tried`` members, use half as many for that family."""
        self.sizes[cfg.model.family] = max(1, tried // 2)


def prepare_search(cfg: RunConfig, out: Path, dataset: Dataset | None = None) -> Search:
    """Load the data once (``dataset``, else the config's source), run the LR range test when asked, and resolve the
    search space (fine-tuning: with the saved model's architecture and scaler)."""
    cfg = adopt(cfg)
    data = prepare_data(cfg, dataset)
    lr_info = None
    if cfg.train.lr_auto:
        _, found = resolve_lr(cfg, data)
        lr_info = found.to_dict()
        center = found.suggestion
    else:
        center = None
    params = resolve_space(cfg, data.dataset.kind, data.dataset.input_shape, center, len(data.split.train))
    search = Search(cfg, out, params, base_data=data, lr_find=lr_info,
                    fingerprint=rundir.fingerprint(data.dataset, data_source(cfg, dataset)))
    search.data_by_scaler[data.scaler.method] = data
    return search


def open_study(search: Search, resume: bool, worker: bool = False) -> optuna.Study:
    """Create or load the study; an existing one with trials needs ``resume``, and one measured on other data is
    refused (:mod:`nntune.rundir`). Workers get their own seeds. The process that creates the study enqueues
    nntune's defaults as its first trials (``search.defaults_first``)."""
    cfg, out, params = search.cfg, search.out, search.params
    data = search.fingerprint
    direction = objective_spec(search.task)[1]
    url = cfg.search.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    storage = make_storage(url, cfg.search.heartbeat)
    shown = redact(url)
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    name = cfg.search.study_name
    if name in existing and not resume and existing[name].n_trials > 0:
        raise ConfigError(f"study {name!r} already has {existing[name].n_trials} trials in {shown}; pass --resume to "
                          "continue it or --study-name NEW for a new one")
    # a fresh study is reproducible from cfg.seed; a resumed study or an extra worker must not replay the same
    # proposals, so its sampler seed also depends on the trials already there and on the process
    n_before = existing[name].n_trials if name in existing else 0
    seed = cfg.seed if (n_before == 0 and not worker) else cfg.seed + 7919 * n_before + os.getpid()
    sampler = make_sampler(cfg.search.sampler, seed % 2**31, params)
    objectives = cfg.search.objectives
    multi = len(objectives) > 1
    if multi and cfg.search.sampler not in ("tpe", "nsga2", "random", "grid"):
        raise ConfigError(f"--sampler {cfg.search.sampler} handles one objective only; use tpe or nsga2 with "
                          f"--objectives {','.join(objectives)}")
    # Optuna prunes single-objective studies only; the extra objectives (size, latency) are minimized
    pruner = optuna.pruners.NopPruner() if multi else make_pruner(cfg.search.pruner, search.trial_epochs)
    directions = [direction] + ["minimize"] * (len(objectives) - 1)
    try:  # the study name is unique in the storage: of workers starting together, exactly one creates it
        study = optuna.create_study(study_name=name, storage=storage, directions=directions, sampler=sampler,
                                    pruner=pruner)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        created = False
    found = [d.name.lower() for d in study.directions]
    recorded = study.user_attrs.get("objectives", objectives if created else ["score"])
    if found != directions or recorded != objectives:
        raise ConfigError(f"study {name!r} in {shown} optimizes {', '.join(recorded)} ({', '.join(found)}); this "
                          f"search asks for {', '.join(objectives)}: use the same --objectives or a new --study-name")
    rundir.same_data(study.user_attrs.get("data"), data, f"study {name!r} in {shown}")
    if created or "data" not in study.user_attrs:
        study.set_user_attr("data", data)
    if created:
        study.set_user_attr("objectives", objectives)
    study.set_user_attr("storage", shown)
    # only the process that created the study enqueues, so racing workers do not enqueue twice; a grid enumerates
    # its own points
    if created and cfg.search.sampler != "grid":
        if cfg.search.warm_start:  # an earlier study's best configurations first
            for warm in warm_trials(source_study(cfg.search.warm_start), params, cfg.search.warm_start_top):
                study.enqueue_trial(warm["values"], user_attrs={"warm_start": {
                    "source": cfg.search.warm_start, "trial": warm["number"], "value": warm["value"]}})
        if cfg.search.defaults_first:
            for values in default_trials(params, cfg, search.base_data.dataset.kind):
                study.enqueue_trial(values, user_attrs={"default": True}, skip_if_exists=True)
    return study


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


def _train_plus_val(cfg: RunConfig, data: PreparedData) -> PreparedData:
    """The same split with train+val as the training set; the scaler is refitted on it (validation is reported for
    reference only: no choice is made on it any more)."""
    from nntune.data.splits import Split

    split = Split(torch.cat([data.split.train, data.split.val]).sort().values, data.split.val, data.split.test)
    return prepare_data(cfg, data.dataset, split=split)


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
    import csv

    rows = trials_table(study)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with atomic.replacing(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def tune(cfg: RunConfig, out: str | Path, resume: bool = False, progress: bool = False,
         log: Sequence[str] = (), dataset: Dataset | None = None, started: float | None = None) -> dict:
    """Search, re-run the finalists with extra seeds, then fit the chosen model and evaluate it on the test split
    once. ``log`` names loggers (``tensorboard``, ``mlflow``) that record every trial and the final fit; ``dataset``
    (in memory) replaces the config's data source; ``started`` (a ``time.monotonic()`` reading) is when the
    command's time budget began (default: now). Returns ``result.json``'s content."""
    out = Path(out)
    with Tracker(log, out, name=f"tune {cfg.search.study_name}", config=cfg.to_dict(), command="tune") as tracker:
        result = _tune(cfg, out, resume, progress, tracker, dataset, started)
        tracker.summary({"best_value": result["best_value"], **{f"test_{k}": v for k, v in result["test"].items()},
                         **{f"trials_{k}": v for k, v in result["trials"].items()}})
        tracker.artifacts([out / "best", out / "result.json", out / "trials.csv"])
    return result


def _tune(cfg: RunConfig, out: Path, resume: bool, progress: bool, tracker: Tracker,
          dataset: Dataset | None, started: float | None) -> dict:
    budget = Budget.from_config(cfg.search, started)
    check_out(cfg, out)
    rundir.check(out, "tune")
    cfg = adopt(cfg)  # fine-tuning: the saved model's architecture and scaler
    search = prepare_search(cfg, out, dataset)
    search.tracker = tracker
    monitor, direction = objective_spec(search.task)
    out.mkdir(parents=True, exist_ok=True)
    study = open_study(search, resume)  # the last check (resume, objectives, data): nothing is written before it
    save_config(cfg, out / "config.yaml")
    rundir.record(out, "tune", search.fingerprint)
    completed = run_trials(search, study, budget, progress, lambda s: finishing_cost(search, s, budget))
    write_trials_csv(study, out / "trials.csv")
    n = {s.name.lower(): count(study, (s,)) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    if n["complete"] == 0:
        within = f" within --timeout {budget.timeout:g}s" if budget.stopped_by == "timeout" else ""
        more = "; give the search more time" if within else ""
        raise NNTuneError(f"no trial completed{within} ({n['pruned']} pruned, {n['fail']} failed; see "
                          f"{out / 'trials.csv'}){more}")
    multi = is_multi(study)
    finalists = run_finalists(search, study, budget) if completed and not multi else None
    chosen = best_trial(study)
    if finalists and finalists.get("chosen") is not None:
        chosen = next(t for t in study.get_trials(deepcopy=False) if t.number == finalists["chosen"])
    final = final_fit(search, chosen, budget)
    result = {
        "study": {"name": study.study_name, "storage": study.user_attrs.get("storage"), "direction": direction,
                  "objectives": cfg.search.objectives,
                  "objective": monitor, "sampler": cfg.search.sampler, "pruner": cfg.search.pruner,
                  "trial_epochs": search.trial_epochs, "population_sizes": search.sizes or
                  ({"all": cfg.search.population} if cfg.search.population else {})},
        "best_trial": chosen.number,
        "best_params": chosen.params,
        "chosen_config": chosen.user_attrs["config"],
        "best_value": score(chosen),
        "search_best_trial": best_trial(study).number,
        "pareto": save_pareto(study, out) if multi else None,
        "val": chosen.user_attrs.get("val", {}),
        "test": final["test"],
        "final": final,
        "finalists": finalists,
        "trials": n,
        "budget": budget.to_dict(),
        "interrupted": not completed,
        "lr_find": search.lr_find,
        "data": search.base_data.describe(),
        "tracking": tracker.info,
    }
    if cfg.search.ensemble:
        result["ensemble"] = ensemble_test(study, out / "trials", search.base_data, cfg.search.ensemble)
    result["budget"] = budget.to_dict()
    result["seconds"] = result["budget"]["seconds"]
    artifacts.write_result(out, result)
    return result
