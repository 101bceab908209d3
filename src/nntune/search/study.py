"""Run a search: an Optuna study over the search space, with pruning, persistent storage and a final model.

Optuna does the sampling, pruning, storage and multi-worker coordination (any number of ``nntune worker`` processes
may share one study through its storage URL; there is no scheduler of our own). SQLite is the default storage, in
the run directory. A fresh study starts with nntune's default configuration for each model family that fits the
data, so a search never ends below the defaults. Trials run as populations of one structure
(:mod:`nntune.search.trials`) within a budget of trials and/or time (:mod:`nntune.search.budget`), in this process
or, with ``search.ray``, on a Ray cluster's workers (:mod:`nntune.cluster.ray`); the best configurations are re-run
with extra seeds before the choice (:mod:`nntune.search.finalists`). Heartbeats mark a trial left RUNNING by a
crashed process as FAILED, and its configuration is retried once. ``--trials N`` counts finished (complete or
pruned) trials in the study, so a resumed search runs only what is left.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import optuna
from optuna.trial import TrialState

from nntune import artifacts, rundir
from nntune.cluster.ray import import_ray, run_on_ray
from nntune.config import RunConfig, save_config
from nntune.data.sources import Dataset
from nntune.errors import ConfigError, NNTuneError
from nntune.redact import redact
from nntune.registry import SAMPLERS
from nntune.search.budget import Budget, count
from nntune.search.ensemble import ensemble_test
from nntune.search.final import final_fit
from nntune.search.finalists import finishing_cost, run_finalists
from nntune.search.objectives import best_trial, is_multi, score
from nntune.search.records import save_pareto, write_trials_csv
from nntune.search.samplers import make_pruner, make_sampler
from nntune.search.setup import Search, prepare_search
from nntune.search.space import default_trials
from nntune.search.trials import run_trials
from nntune.search.warm_start import source_study, warm_trials
from nntune.storage import make_storage, study_url
from nntune.tracking import Tracker
from nntune.training.context import objective
from nntune.training.finetune import adopt, check_out


def open_study(search: Search, resume: bool, worker: bool = False) -> optuna.Study:
    """Create or load the study; an existing one with trials needs ``resume``, and one measured on other data is
    refused (:mod:`nntune.rundir`). Workers get their own seeds. The process that creates the study enqueues
    nntune's defaults as its first trials (``search.defaults_first``)."""
    cfg, out, params = search.cfg, search.out, search.params
    data = search.fingerprint
    direction = objective(search.task)[1]
    url = study_url(cfg.search.storage, out)
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
    if multi and not SAMPLERS[cfg.search.sampler].multi_objective:
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


def tune(cfg: RunConfig, out: str | Path, resume: bool = False, progress: bool = False,
         log: Sequence[str] = (), dataset: Dataset | None = None, started: float | None = None) -> dict:
    """Search, re-run the finalists with extra seeds, then fit the chosen model and evaluate it on the test split
    once. ``log`` names loggers (``tensorboard``, ``mlflow``) that record every trial and the final fit; ``dataset``
    (in memory) replaces the config's data source; ``started`` (a ``time.monotonic()`` reading) is when the
    command's time budget began (default: now). Returns ``result.json``'s content."""
    out = Path(out)
    with Tracker(log, out, name=f"tune {cfg.search.study_name}", config=cfg.to_dict(), command="tune") as tracker:
        result = _tune(cfg, out, resume, progress, tracker, dataset, started, log)
        tracker.summary({"best_value": result["best_value"], **{f"test_{k}": v for k, v in result["test"].items()},
                         **{f"trials_{k}": v for k, v in result["trials"].items()}})
        tracker.artifacts([out / "best", out / "result.json", out / "trials.csv"])
    return result


def _tune(cfg: RunConfig, out: Path, resume: bool, progress: bool, tracker: Tracker,
          dataset: Dataset | None, started: float | None, log: Sequence[str]) -> dict:
    budget = Budget.from_config(cfg.search, started)
    if cfg.search.ray:
        import_ray()  # a missing extra is said before any work
    check_out(cfg, out)
    rundir.check(out, "tune")
    cfg = adopt(cfg)  # fine-tuning: the saved model's architecture and scaler
    search = prepare_search(cfg, out, dataset)
    search.tracker = tracker
    monitor, direction = objective(search.task)
    out.mkdir(parents=True, exist_ok=True)
    study = open_study(search, resume)  # the last check (resume, objectives, data): nothing is written before it
    save_config(cfg, out / "config.yaml")
    rundir.record(out, "tune", search.fingerprint)
    keep = partial(finishing_cost, search, budget=budget)  # study -> seconds for the finalists and the final fit
    if cfg.search.ray:  # the same trials, run by workers on a Ray cluster
        completed, cluster = run_on_ray(search, study, budget, progress, log, keep)
    else:
        completed, cluster = run_trials(search, study, budget, progress, keep), None
    write_trials_csv(study, out / "trials.csv")
    n = {s.name.lower(): count(study, (s,)) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    if n["complete"] == 0:
        within = f" within --timeout {budget.timeout:g}s" if budget.stopped_by == "timeout" else ""
        more = "; give the search more time" if within else ""
        raise NNTuneError(f"no trial completed{within} ({n['pruned']} pruned, {n['fail']} failed; see "
                          f"{out / 'trials.csv'}){more}")
    multi = is_multi(study)
    finalists, seed_models = run_finalists(search, study, budget) if completed and not multi else (None, {})
    chosen = best_trial(study)
    if finalists and finalists.get("chosen") is not None:
        chosen = next(t for t in study.get_trials(deepcopy=False) if t.number == finalists["chosen"])
    rows = {r["trial"]: r for r in (finalists or {}).get("finalists", [])}
    by_number = {t.number: t for t in study.get_trials(deepcopy=False) if t.number in rows}
    others = [(by_number[n], seed_models.get(n, [])) for n, r in rows.items()  # finalists whose seeds all trained
              if n != chosen.number and r["mean"] is not None]
    final = final_fit(search, chosen, budget, seed_models.get(chosen.number),
                      rows.get(chosen.number, {}).get("seed_seconds"), others)
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
    if cluster is not None:
        result["cluster"] = cluster
    if cfg.search.ensemble:
        result["ensemble"] = ensemble_test(study, out / "trials", search.base_data, cfg.search.ensemble)
    result["budget"] = budget.to_dict()
    result["seconds"] = result["budget"]["seconds"]
    artifacts.write_result(out, result)
    return result
