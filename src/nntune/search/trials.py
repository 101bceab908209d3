"""Run a study's trials as populations: ask one trial, fill a population with its structure, train, tell.

A population is K Optuna trials that share one structure (family, depth, widths, activation, batch norm, dropout
placement, scaler, augmentation preset, batch size, optimizer, schedule kind): the first trial is sampled freely, the
other K-1 are enqueued with its structure values fixed, so the sampler fills in their continuous settings (LR, weight
decay, dropout rate, augmentation strength, schedule parameters, patience). Waiting trials already in the study
(defaults, retries of crashed trials, another worker's enqueued members) are taken first and train in a population of
their own structure. Every member is an ordinary trial: the pruner judges each one every epoch, and each is told its
own result, so the study, resume, workers, trials.csv and the report see trials as before.

Optuna's ``study.optimize`` runs one trial at a time, so this module drives ask/tell itself and records the
heartbeats of all running members (a crashed process's members are failed by the heartbeat and retried once).
K is measured per model family, and per cell and size of a recurrent model
(:func:`nntune.training.context.size_class`, :func:`nntune.training.pipeline.choose_population_size`), unless
``search.population`` sets it.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable
from datetime import datetime
from functools import partial

import optuna
import torch
from optuna.trial import TrialState

from nntune import artifacts
from nntune.config import RunConfig, apply_overrides
from nntune.errors import NNTuneError
from nntune.redact import redact
from nntune.search import halving
from nntune.search.budget import FINISHED, PROBE_SHARE, Budget
from nntune.search.constraints import extra_values, measure, violation
from nntune.search.finalists import population_room
from nntune.search.objectives import is_multi
from nntune.search.progress import LiveTrials
from nntune.search.space import sample, structure_values
from nntune.search.setup import Search
from nntune.storage import fail_stale_trials
from nntune.training.callbacks import Callback, Deadline, Interrupts
from nntune.training.diagnostics import diagnose
from nntune.training.pipeline import fit_model, fit_population
from nntune.training.resume import RunState
from nntune.training.population.structure import structure_key


MAX_FAILURE_STREAK = 10  # this many failed trials in a row (fewer when the trial cap is smaller) end the search


class OptunaPruning(Callback):
    """Reports the monitored value each epoch and stops training when Optuna's pruner says so."""

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        self.trial, self.monitor, self.pruned, self.lost = trial, monitor, False, False
        self.multi = is_multi(trial.study)

    def on_epoch_end(self, trainer, epoch: int, logs: dict[str, float]) -> None:
        value = logs[self.monitor]
        if not math.isfinite(value) or self.multi:  # Optuna prunes single-objective studies only
            return
        try:
            self.trial.report(value, epoch)
        except optuna.exceptions.UpdateFinishedTrialError:
            self.lost = True  # another process failed it as stale (its heartbeat came late); its retry runs elsewhere
            trainer.stop(f"failed as stale by another worker at epoch {epoch}")
            return
        if self.trial.should_prune():
            self.pruned = True
            trainer.stop(f"pruned at epoch {epoch}")


class Heartbeats:
    """Records a heartbeat for every trial of a population, from its ``ask`` until the population ends (Optuna's own
    heartbeat thread covers one trial of ``optimize`` at a time). A trial gets its first beat when it is added, so a
    process killed at any moment after ``ask`` leaves trials that go stale and are retried; an error or Ctrl-C inside
    the block fails every trial not told yet, so none is left RUNNING."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self.storage = study._storage  # the storage object is not public on Study; RDBStorage has heartbeats
        self.interval = self.storage.get_heartbeat_interval() if hasattr(self.storage, "get_heartbeat_interval") \
            else None
        self.trials: list[optuna.Trial] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, trial: optuna.Trial) -> None:
        with self._lock:
            self.trials.append(trial)
        if self.interval:
            self.storage.record_heartbeat(trial._trial_id)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = [t._trial_id for t in self.trials]
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as err:  # e.g. a locked SQLite file: try again at the next beat
                    warnings.warn(f"heartbeat not recorded for trial id {trial_id}: {err}", stacklevel=1)

    def __enter__(self) -> Heartbeats:
        if self.interval:
            self._thread = threading.Thread(target=self._beat, daemon=True, name="nntune-heartbeats")
            self._thread.start()
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc_type is not None:
            for t in self.trials:
                self.study.tell(t, state=TrialState.FAIL, skip_if_finished=True)


Member = tuple[optuna.Trial, RunConfig]


class Infeasible(Exception):
    """A sampled trial breaks ``--max-params`` or ``--max-latency-ms``; it was told PRUNED without training."""


class OverCap(Exception):
    """Workers that counted the same free slot of ``--trials`` asked together, and others started first: this trial
    was told FAIL without training (an enqueued one waits again), so the study ends at the cap exactly."""


def _ahead(study: optuna.Study, trial: optuna.Trial) -> int:
    """Finished and running trials that started before ``trial`` (by start time, then number: a waiting trial keeps
    the number it was enqueued with, so numbers do not follow the order of asking)."""
    def key(t) -> tuple:
        return t.datetime_start or datetime.min, t.number

    mine = key(trial)
    return sum(1 for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)) if key(t) < mine)


def _waiting(study: optuna.Study, default: bool = False) -> bool:
    """Whether trials wait in the study (only nntune's default trials, with ``default``)."""
    return any(t.user_attrs.get("default") or not default
               for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _ask(search: Search, study: optuna.Study, beats: Heartbeats, cap: int | None) -> tuple[Member, dict]:
    """One new trial with its sampled config (trial epochs, no LR range test) recorded as user attributes; one
    asked beyond the trial ``cap`` (other workers asked for the same slots first) is :class:`OverCap`."""
    with warnings.catch_warnings():  # ask() warns that heartbeats need optimize(); Heartbeats records them here
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        trial = study.ask()
    beats.add(trial)
    try:
        cfg, values = sample(trial, search.params, search.cfg)
        # a default trains as `nntune train` would (its own epochs, early stopping ends it): the floor of the search
        epochs = cfg.train.epochs if trial.user_attrs.get("default") else search.sampled_epochs
        cfg = apply_overrides(cfg, {"train.epochs": epochs, "train.lr_auto": False})
        sizes = measure(cfg, search.base_data.dataset, search.cfg.search)
    except NNTuneError as err:  # values that are valid alone but not together: this trial fails, the search goes on
        trial.set_user_attr("fail_reason", f"{err.__class__.__name__}: {err}")
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    # checked after sampling, so that a trial another worker asked first is in the study by now
    if cap is not None and _ahead(study, trial) >= cap:
        asked = study._storage.get_trial(trial._trial_id)  # its attributes as enqueued (not public on Study)
        if "fixed_params" in asked.system_attrs:  # an enqueued trial (a default, a retry) waits again
            study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, user_attrs=asked.user_attrs,
                                                      system_attrs=asked.system_attrs))
        trial.set_user_attr("over_cap", cap)
        trial.set_user_attr("fail_reason", f"over --trials {cap}: other workers took the last slots first")
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise OverCap
    trial.set_user_attr("config", redact(cfg.to_dict()))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    for key, value in sizes.items():
        trial.set_user_attr(key, value)
    why = violation(sizes, search.cfg.search)
    if why is not None:  # pruned before any training: no COMPLETE trial breaks a hard limit
        trial.set_user_attr("infeasible", why)
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        raise Infeasible(why)
    return (trial, cfg), values


def ask_population(search: Search, study: optuna.Study, budget: Budget, beats: Heartbeats) -> list[Member]:
    """Trials within the budget's cap: one sampled freely, then members with its structure (waiting trials first).
    A grid sampler gives every trial its own grid point, so there the members are plain trials, grouped later.
    nntune's default trials are all asked together, whatever the population size: the search's floor runs first."""
    first, values = _ask(search, study, beats, budget.trials)
    size = search.population_size(first[1], seconds=PROBE_SHARE * budget.search_left())
    members = [first]
    grid = study.sampler if hasattr(study.sampler, "unstarted") else None
    fixed = None if grid else structure_values(values)
    # the cap is counted again before each member: other workers' trials are running too
    while ((len(members) < size or _waiting(study, default=True)) and budget.trials_left(study) > 0
           and not (grid and grid.unstarted(study) == 0)):
        if search.interrupts is not None:
            search.interrupts.check()
        if fixed is not None and not _waiting(study):
            study.enqueue_trial(fixed, user_attrs={"population_of": first[0].number})
        try:
            members.append(_ask(search, study, beats, budget.trials)[0])
        except (NNTuneError, Infeasible, OverCap):  # told FAIL or PRUNED by _ask; train the members asked so far
            break
    return members


def train_population(search: Search, study: optuna.Study, members: list[Member], budget: Budget,
                     room: Callable[[RunConfig, int], float] | None = None) -> list[str]:
    """Train the members (grouped by structure; one group is one population) and tell each trial its result.
    ``room`` (config, members -> seconds) bounds how long a population may train so that the finishing steps keep
    their time (see :func:`nntune.search.finalists.population_room`). Returns each member's final state name
    (COMPLETE, PRUNED or FAIL; RETRY when it ran out of memory in a population and was enqueued again for a smaller
    one)."""
    groups: dict[str, list[Member]] = {}
    saved = {}
    for m in members:
        state = halving.saved_state(search.out, study, m[0]) if search.halving else None
        if state is not None and state[1].epoch < m[1].train.epochs:  # a crashed trial's last rung: it goes on alone
            saved[m[0].number] = state
            groups[f"continued {m[0].number}"] = [m]
        else:
            groups.setdefault(structure_key(m[1]), []).append(m)
    states = []
    floor = sum(1 for g in groups.values() if _has_default(g))  # groups of default trials still to train
    for group in groups.values():
        deadline = budget.training_left
        if _has_default(group):  # the default trials share the time left: each runs, at fewer epochs if it must
            deadline = _earlier(budget.training_left, time.perf_counter() + budget.training_left() / floor)
            floor -= 1
        elif room is not None:  # the defaults are the floor of the search: only the time budget cuts them
            deadline = _earlier(deadline, time.perf_counter() + room(group[0][1], len(group)))
        states += _train_group(search, study, group, budget, saved.get(group[0][0].number), deadline)
    return states


def _has_default(group: list[Member]) -> bool:
    return any(t.user_attrs.get("default") for t, _ in group)


def _population_record(search: Search, cfg: RunConfig, first: int, size: int, wall: float) -> dict:
    """What a trial records of the population it trained in: its first trial, size and wall time, and the stacking
    gain measured for its size class (what the finishing steps' estimates divide its time by)."""
    gain = search.stacking_gain(cfg)
    return {"first": first, "size": size, "seconds": round(wall, 3),
            **({"gain": round(gain, 3)} if gain is not None else {})}


def _earlier(seconds_left, end: float):
    """A deadline that ends at ``end`` (a perf_counter reading) or when ``seconds_left()`` does, if sooner."""
    return lambda: min(seconds_left(), end - time.perf_counter())


def _train_group(search: Search, study: optuna.Study, group: list[Member], budget: Budget,
                 saved: tuple[int, RunState] | None = None, deadline=None) -> list[str]:
    """One population of same-structure members: train, record each member's history and findings, tell it.
    ``saved``: (crashed trial, its state at its last rung) that the group's one member continues from;
    ``deadline``: seconds left to train (default: the search's)."""
    deadline = deadline or budget.training_left
    monitor = search.monitor
    trials, cfgs = [t for t, _ in group], [c for _, c in group]
    pruning = [OptunaPruning(t, monitor) for t in trials]
    if search.halving:
        board = halving.RungBoard(study)
        rung_epochs = halving.rungs(search.trial_epochs, search.sampled_epochs)
        halvings = [halving.Halving(t, monitor, board, rung_epochs, search.out) for t in trials]
    else:
        halvings = [None] * len(trials)
    if saved is not None:  # the epochs already trained count as this trial's: reported, and seen by its rungs
        trials[0].set_user_attr("continued_from", {"trial": saved[0], "epoch": saved[1].epoch})
        halvings[0].replay(saved[1].history)
        if not is_multi(study):
            for row in saved[1].history:
                trials[0].report(row[monitor], row["epoch"])
    data = search.data_for(cfgs[0])
    logs = [search.tracker.run(f"trial_{t.number:04d}", {"trial": t.number, **t.params}) for t in trials]
    first = trials[0].number
    started = time.perf_counter()
    try:
        extra = [search.interrupts] if search.interrupts is not None else []
        callbacks = [[p, *([h] if h else []), Deadline(deadline), *extra, *([log] if log else [])]
                     for p, h, log in zip(pruning, halvings, logs)]
        if saved is not None:
            model, _, fit = fit_model(cfgs[0], data, callbacks[0], resume=saved[1])
            fits = [(model, fit)]
        else:
            fits = fit_population(cfgs, data, callbacks)
    except BaseException as err:
        for log in filter(None, logs):
            log.end("FAIL", {})
        if not isinstance(err, (NNTuneError, torch.OutOfMemoryError)):
            raise
        retry = isinstance(err, torch.OutOfMemoryError) and len(trials) > 1
        for t in trials:
            t.set_user_attr("fail_reason", f"{err.__class__.__name__}: {err}")
            study.tell(t, state=TrialState.FAIL, skip_if_finished=True)
        if not retry:
            return ["FAIL"] * len(trials)
        # out of memory as a population: the same trials again, in populations half the size
        search.shrink_population(cfgs[0], len(cfgs))
        for t in trials:
            keep = {"default": True} if t.user_attrs.get("default") else {}
            study.enqueue_trial(t.params, user_attrs={"retry_of_oom": t.number, **keep})
        return ["RETRY"] * len(trials)
    wall = time.perf_counter() - started
    # a signal now would cost trials that finished training: every result is recorded first, then the search stops
    recording = time.perf_counter()
    with search.interrupts.deferred() if search.interrupts is not None else contextlib.nullcontext():
        states = [_record(search, study, member, fitted, prune, halved, log, data,
                          {"seconds": round(wall / len(trials), 3),
                           "population": _population_record(search, cfgs[0], first, len(trials), wall)})
                  for member, fitted, prune, halved, log in zip(group, fits, pruning, halvings, logs)]
    budget.record = time.perf_counter() - recording
    for (trial, cfg), (_, fit) in zip(group, fits):
        if trial.user_attrs.get("default") and fit.stop_reason.startswith(Deadline.DEFAULT):
            budget.cut.append(f"default trial {trial.number} ({cfg.model.family}) trained {len(fit.history)} of "
                              f"{cfg.train.epochs} epochs: the budget is short for the untuned defaults")
    return states


def _record(search: Search, study: optuna.Study, member: Member, fitted: tuple, prune: OptunaPruning,
            halved: halving.Halving | None, log, data, attrs: dict) -> str:
    """Save a trained member's weights (when complete), set its attributes and tell the study; its state name.
    A member halved at a rung is PRUNED (its epochs are reported), as a trial Optuna's pruner stopped."""
    (trial, cfg), (model, fit) = member, fitted
    halved_at = halved.halved_at if halved is not None else None
    attrs = {**attrs, "best_epoch": fit.best_epoch, "stop_reason": fit.stop_reason, "stopped_epoch": fit.stopped_epoch,
             "history": [{k: v for k, v in h.items() if k != "grad_norms"} for h in fit.history],
             "findings": [f.to_dict() for f in diagnose(fit.history, model, data.x_val, fit.initial_val_loss)]}
    if fit.stop_reason.startswith("non-finite"):
        attrs["fail_reason"] = fit.stop_reason
        state, value = TrialState.FAIL, None
    elif prune.lost:
        state, value = TrialState.FAIL, None
    elif prune.pruned or halved_at:
        state, value = TrialState.PRUNED, None
        if halved_at:
            attrs["halved_at"] = halved_at
    else:
        artifacts.save(search.out / "trials" / str(trial.number), model, cfg, data.scaler, data.dataset.meta())
        attrs["val"] = fit.best_val
        state, value = TrialState.COMPLETE, fit.best[search.monitor]
    told = value
    if value is not None and is_multi(study):  # the score, then the model's size and/or latency
        told = [value, *extra_values(trial.user_attrs, search.cfg.search.objectives)]
    try:
        for key, v in attrs.items():
            trial.set_user_attr(key, v)
        study.tell(trial, told, state=state, skip_if_finished=True)
        taken_over = prune.lost
    except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale by another process meanwhile
        state, taken_over = TrialState.FAIL, True
    if halved is not None and not taken_over:  # its rung states (and the crashed trial's it continued) are done
        halving.forget(search.out, study, trial)
    if log:
        log.end("FAIL" if prune.lost else state.name, {"objective": value} if value is not None else {})
    return "FAIL" if prune.lost else state.name


def run_trials(search: Search, study: optuna.Study, budget: Budget, progress: bool = False,
               finishing_cost=None) -> bool:
    """Run populations of trials until the budget ends (with a live table when ``progress``); ``finishing_cost``
    (study -> seconds) tells how much time to keep back for what follows. Returns False when Ctrl-C ended it."""
    if finishing_cost is None:
        budget.keep_back(0.0)  # nothing follows (a worker): the search may use the whole budget
    # a population stops where its own members could no longer be finalists in the time left
    room = None if finishing_cost is None else partial(population_room, search, study, budget)
    live = LiveTrials(study, budget) if progress else None
    streak = 0
    limit = MAX_FAILURE_STREAK if budget.trials is None else min(MAX_FAILURE_STREAK, budget.trials_left(study))
    interrupts = search.interrupts = Interrupts()
    try:
        if live:
            live.__enter__()
        interrupts.__enter__()
        while not budget.check(study):
            interrupts.check()
            fail_stale_trials(study)  # before counting: a crashed worker's trials stop counting
            if isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study):
                budget.stopped_by = "grid"
                break
            if budget.trials_left(study) <= 0:  # the rest of the trial cap is running in other workers
                budget.stopped_by = "trials"
                break
            with Heartbeats(study) as beats:
                states = None
                asking = time.perf_counter()
                try:
                    members = ask_population(search, study, budget, beats)
                except NNTuneError:
                    members = []
                except Infeasible:
                    members, states = [], ["PRUNED"]
                except OverCap:  # neither a failure nor a success: the loop's count decides whether to go on
                    members, states = [], []
                asking = time.perf_counter() - asking
                if states is None:
                    states = train_population(search, study, members, budget, room) if members else ["FAIL"]
                budget.overhead = asking + budget.record
            for state in states:  # a member retried after running out of memory neither fails nor succeeds
                if state == "FAIL":
                    streak += 1
                elif state != "RETRY":
                    streak = 0
            if live:
                live.refresh()
            if streak >= max(1, limit):
                failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                          if "over_cap" not in t.user_attrs]
                last_reason = failed[-1].user_attrs.get("fail_reason", "see the log") if failed else "unknown"
                raise NNTuneError(f"every one of the last {streak} trials failed (last: {last_reason}); fix the "
                                  "config or search space and --resume")
            if finishing_cost is not None:
                budget.keep_back(finishing_cost(study))
    except KeyboardInterrupt:
        budget.end_search("interrupted")
        return False
    finally:
        interrupts.__exit__()
        search.interrupts = None
        if budget.search_seconds is None:
            budget.end_search()
        if live:
            live.__exit__(None, None, None)
    return True
