"""Noise-aware choice: re-train the best configurations with extra seeds and choose by the mean, not by one run.

A search keeps the trial with the best validation score, and among many trials the best one is often a lucky seed.
Before the final fit the top ``search.finalists`` configurations (distinct ones) are trained again with
``search.finalist_seeds - 1`` other seeds (initial weights and data order), the seeds of one configuration as one
population, and the configuration with the best mean validation score over its seeds wins (equal means: the lower
mean validation loss). A seed that diverges scores as a failure. The finalists' runs are not Optuna trials: the
study stays a record of the search.

Under a time budget the search keeps back the finalists' and the final fit's estimated time (a third of the budget
until trials have measured it, with a margin), so a timed search ends with the choice: as many finalists as fit,
and when fewer than two fit on the configured seeds, two on fewer seeds each; when they fit only without the final
retrain, they run and the retrain gives way. What is kept back is estimated from the trials finished so far, so a
population also stops training where its own members, were they the best, could no longer be finalists in the time
left (:func:`population_room`): a late, slow population that takes the lead cannot leave the choice without time.
A finalist whose trial the search's deadline cut short re-trains its seeds for the epochs that trial ran.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from types import SimpleNamespace

import optuna
from optuna.trial import FrozenTrial
from torch import nn

from nntune.config import RunConfig, apply_overrides, build_config
from nntune.search.budget import PROBE_SHARE, Budget
from nntune.search.objectives import is_multi, maximize, rank, ranked, score
from nntune.search.setup import Search
from nntune.training.callbacks import Deadline, StopAtEpoch
from nntune.training.pipeline import fit_configs

ROOM_STEPS = 14  # bisection steps of population_room: the time left / 2**14 (under 0.1 s of a 10-minute budget)
ROOM_SHARE = 0.9  # of the room found: a population's wall time passes its deadline by the step and validation it ends
STACKING_GAIN = 2.0  # a member in a smaller population runs at most this much slower than its share of a larger one
# (when the population's stacking gain was not measured)
ESTIMATE_MARGIN = 0.15  # kept on top of the finishing steps' estimate (per-population times vary ~10 % on a CPU)


def top_trials(study: optuna.Study, n: int) -> list[FrozenTrial]:
    """The ``n`` best complete trials with distinct configurations, best first (ties by validation loss)."""
    seen, top = set(), []
    for t in (t for t in ranked(study) if math.isfinite(score(t))):
        key = json.dumps(t.params, sort_keys=True)
        if key not in seen:
            seen.add(key)
            top.append(t)
        if len(top) == n:
            break
    return top


def _population_seconds(trial: FrozenTrial) -> float:
    """Wall time of the population the trial trained in (its own time for a trial from before populations)."""
    pop = trial.user_attrs.get("population") or {"seconds": trial.user_attrs.get("seconds") or 0.0}
    return float(pop["seconds"])


def _share(trial: FrozenTrial, members: int) -> float:
    """Estimated seconds ``members`` of the trial's configuration take as one population: their share of the trial's
    population's wall time, slower per member than in that larger population by the stacking gain measured for it
    (``population.gain``: member-steps per second at the measured size over one member's, an upper bound for the
    smaller population it trained in), else by at most ``STACKING_GAIN``; never more than the whole of it. Measured
    gains on a CPU: about 1.7 for MLPs, 1.15-1.35 for the CNNs that stack at all."""
    pop = trial.user_attrs.get("population") or {}
    gain = min(STACKING_GAIN, float(pop.get("gain") or STACKING_GAIN))
    return _population_seconds(trial) * min(1.0, gain * members / max(1, int(pop.get("size", 1))))


def seed_cost(search: Search, trial: FrozenTrial, extra: int | None = None) -> float:
    """Estimated seconds to train ``trial``'s configuration with ``extra`` more seeds (default: the config's), in
    populations of the finalists' size: a population of 2 seeds costs its share of a 16-member population's time,
    not all of it."""
    extra = search.cfg.search.finalist_seeds - 1 if extra is None else extra
    size = search.population_size(build_config(trial.user_attrs["config"]), seconds=0)  # an estimate: no probing
    full, rest = divmod(extra, size)
    return full * _share(trial, size) + (_share(trial, rest) if rest else 0.0)


def final_cost(trial: FrozenTrial, data_share: float = 1.25) -> float:
    """Estimated seconds of the final fit: one member's share of its population's wall time (see :func:`_share`),
    for the epochs the final fit trains (up to the best epoch of those the trial ran), times the larger train+val
    set (``data_share``)."""
    alone = _share(trial, 1)
    ran = len(trial.user_attrs.get("history") or []) or 1
    epochs = min(ran, int(trial.user_attrs.get("best_epoch") or ran))
    return alone * epochs / ran * data_share


def plan(search: Search, candidates: list[FrozenTrial], room: float) -> tuple[list[FrozenTrial], float, int]:
    """The best of ``candidates`` (best first) whose extra seeds fit in ``room`` seconds, their estimated seconds
    and the seeds each runs (its own included). As many finalists as fit with the config's seeds; when fewer than two
    fit, fewer seeds each (down to one extra), since two finalists on two seeds still choose by a mean; none when
    not even that fits."""
    for seeds in range(search.cfg.search.finalist_seeds, 1, -1):
        costs = [seed_cost(search, t, seeds - 1) for t in candidates]
        n = len(candidates)
        while n >= 2 and sum(costs[:n]) > room:
            n -= 1
        if n >= 2:
            return candidates[:n], sum(costs[:n]), seeds
    return [], 0.0, 0


def plan_finish(search: Search, candidates: list[FrozenTrial],
                room: float) -> tuple[list[FrozenTrial], float, int, float]:
    """The finalists (as :func:`plan`) and the final retrain's estimated seconds that fit in ``room`` together.
    The finalists come first: when they fit only without the retrain, the retrain's time is 0 (it will not fit,
    so the final model is the seed ensemble or the chosen trial's weights, see :mod:`nntune.search.final`)."""
    final = final_cost(candidates[0]) if candidates else 0.0
    top, cost, seeds = plan(search, candidates, room - final)
    if not top and final > 0:
        top, cost, seeds = plan(search, candidates, room)
        final = 0.0 if top else final
    return top, cost, seeds, final


def finishing_cost(search: Search, study: optuna.Study, budget: Budget) -> float:
    """What the finalists and the final fit will take, estimated from the current top trials (only the finalists
    that fit in the share of the budget kept back count), with ``ESTIMATE_MARGIN`` on top: the search stops when
    what is left reaches this, so without a margin the finalists planned here would miss the time left by the
    seconds that pass before they start, and one fewer (often none) would run."""
    top = top_trials(study, max(1, search.cfg.search.finalists))
    if not top:
        return 0.0
    most = budget.finish_most / (1 + ESTIMATE_MARGIN)
    if is_multi(study):  # a Pareto search has no finalists
        final = final_cost(top[0])
        # one that could not fit the most ever kept back: the chosen trial's weights will be the final model
        return (final if final <= most else 0.0) * (1 + ESTIMATE_MARGIN)
    _, cost, _, final = plan_finish(search, top, most)
    if not cost:  # they fit only within the margin, if at all: keep back the most (keep_back caps it), not nothing
        _, cost, _, final = plan_finish(search, top, budget.finish_most)
    if final > most:
        final = 0.0
    return (final + cost) * (1 + ESTIMATE_MARGIN)


def population_room(search: Search, study: optuna.Study, budget: Budget, cfg: RunConfig, size: int) -> float:
    """Seconds a population of ``size`` members of ``cfg`` starting now may train so that, were its members the
    search's best trials, two of them would still be finalists on two seeds (the final retrain giving way if it must)
    in the time left: the finishing cost :func:`finishing_cost` keeps back grows with the population's own time, and
    is only re-estimated after it. Found by bisection (the cost rises with the population's seconds); inf when the
    finishing steps do not apply (no timeout, finalists off, a Pareto search) or the whole time left fits."""
    n = search.cfg.search.finalists
    if budget.timeout is None or n < 2 or is_multi(study):
        return math.inf
    tops = top_trials(study, n)
    gain = search.stacking_gain(cfg)
    left = budget.finish_left() - budget.record  # recording its trials comes before the finishing steps
    most = budget.finish_most
    config = cfg.to_dict()

    def fits(seconds: float) -> bool:
        pending = SimpleNamespace(number=None, user_attrs={  # the population's best member, as a finished trial
            "config": config, "population": {"size": size, "seconds": seconds, "gain": gain}, "history": [{}],
            "best_epoch": 1})
        candidates = ([pending] * min(size, n) + tops)[:n]
        room = min(most, left - seconds) / (1 + ESTIMATE_MARGIN)
        return bool(plan_finish(search, candidates, room)[0])

    if fits(left) or not fits(0.0):
        return math.inf
    low, high = 0.0, left
    for _ in range(ROOM_STEPS):
        low, high = ((low + high) / 2, high) if fits((low + high) / 2) else (low, (low + high) / 2)
    return ROOM_SHARE * low


def run_finalists(search: Search, study: optuna.Study,
                  budget: Budget) -> tuple[dict | None, dict[int, list[nn.Module]]]:
    """Re-train the finalists that fit in the time left, choose by mean score. Returns the record (None when
    finalists are off; a ``skipped`` reason when there is nothing to choose between: fewer than two complete trials,
    or no time) and each finalist's extra-seed models that trained in full (a seed ensemble's other members)."""
    if search.cfg.search.finalists < 2:
        return None, {}
    candidates = top_trials(study, search.cfg.search.finalists)
    top, _, seeds, final = plan_finish(search, candidates, budget.finish_left())
    if not top:
        if len(candidates) < 2:
            return {"skipped": "fewer than two complete trials", "chosen": None}, {}
        # the numbers that decided it, so a skipped run says which estimate did not fit
        need = sum(seed_cost(search, t, 1) for t in candidates[:2])
        why = (f"fewer than two finalists fit the time left: trials {candidates[0].number} and "
               f"{candidates[1].number} need about {need:.1f} s for one more seed each, "
               f"{budget.finish_left():.1f} s were left")
        budget.cut.append(f"finalists skipped: {why}")
        return {"skipped": why, "chosen": None}, {}
    started = time.perf_counter()
    up = maximize(study)
    rows, models = [], {}
    for t in top:
        cfg = build_config(t.user_attrs["config"], where=f"trial {t.number}")
        runs = [_with_seed(cfg, cfg.seed + 1000 * s) for s in range(1, seeds)]
        # a hard deadline: what is left after them is the final fit's estimated time; a trial the search's deadline
        # cut short is matched for the epochs it ran (its schedule keeps its horizon)
        cut_at = _cut_at(t)
        limit = [[Deadline(lambda: budget.finish_left() - final), *([StopAtEpoch(cut_at)] if cut_at else [])]
                 for _ in runs]
        size = search.population_size(cfg, seconds=PROBE_SHARE * budget.finish_left())
        fits = fit_configs(runs, search.data_for, size, limit)
        scores = [float(score(t))] + [_score(fit, search.monitor) for _, fit in fits]
        finite = [s for s in scores if math.isfinite(s)]
        losses = [rank(t, up)[1]] + [_score(fit, "val_loss") for _, fit in fits]  # breaks a tie of the means
        cut = sum(fit.stop_reason.startswith(Deadline.DEFAULT) for _, fit in fits)
        if cut:
            budget.cut.append(f"finalist trial {t.number}: {cut} of {len(runs)} seed runs stopped at the deadline")
        rows.append({"trial": t.number, "seeds": [cfg.seed] + [r.seed for r in runs], "scores": scores,
                     "mean": statistics.fmean(finite) if len(finite) == len(scores) else None,
                     "std": statistics.stdev(finite) if len(finite) == len(scores) and len(finite) > 1 else None,
                     "val_loss_mean": statistics.fmean(losses) if all(map(math.isfinite, losses)) else None,
                     "cut": cut, "seed_seconds": [round(fit.seconds, 2) for _, fit in fits]})
        if not cut and len(finite) == len(scores):
            models[t.number] = [model for model, _ in fits]
    return {"finalists": rows, "chosen": choose(rows, up)["trial"],
            "seconds": round(time.perf_counter() - started, 2),
            "by": f"mean val {search.monitor.removeprefix('val_')} over {seeds} seeds"}, models


def more_seeds(search: Search, trial: FrozenTrial, have: int, budget: Budget | None,
               measured: list[float] | None = None) -> tuple[list[nn.Module], str]:
    """More seeds of the chosen ``trial``'s configuration for its seed ensemble of ``have`` members, up to
    ``search.final_seeds`` in all: what the final retrain would have taken, once the ensemble is the final model, and
    any time the finishing margin left. Each round trains as many as fit the time left, in populations: a seed is
    estimated at the mean seconds of the configuration's seed runs so far (``measured``: the finalists', then these),
    else by :func:`seed_cost`, with ``ESTIMATE_MARGIN``. A seed the deadline stopped early or that diverged is left
    out (an undertrained member would weaken the ensemble) and ends the growth. Returns the models and why the growth
    stopped, in words."""
    want = search.cfg.search.final_seeds
    if have >= want:
        return [], f"{have} seeds: search.final_seeds is {want}"
    left = budget.finish_left if budget is not None else (lambda: math.inf)
    cfg = build_config(trial.user_attrs["config"], where=f"trial {trial.number}")
    size = search.population_size(cfg, seconds=PROBE_SHARE * left())
    cut_at = _cut_at(trial)
    measured = list(measured or [])
    models: list[nn.Module] = []
    while have + len(models) < want:
        each = statistics.fmean(measured) if measured else seed_cost(search, trial, 1)
        n = min(size, want - have - len(models))
        while n and each * n * (1 + ESTIMATE_MARGIN) > left():
            n -= 1
        if not n:
            why = f"{have + len(models)} seeds: one more needs about {each:.1f} s, {max(0.0, left()):.1f} s were left"
            return models, why
        first = have + len(models)  # the finalists trained seeds 1 .. have-1 (cfg.seed + 1000 * s)
        runs = [_with_seed(cfg, cfg.seed + 1000 * s) for s in range(first, first + n)]
        limit = [[Deadline(left), *([StopAtEpoch(cut_at)] if cut_at else [])] for _ in runs]
        fits = fit_configs(runs, search.data_for, size, limit)
        kept = [model for model, fit in fits if math.isfinite(_score(fit, search.monitor))
                and not fit.stop_reason.startswith(Deadline.DEFAULT)]
        models += kept
        measured += [fit.seconds for _, fit in fits]
        if len(kept) < n:
            why = f"{n - len(kept)} of {n} more seed runs stopped at the deadline or diverged (left out)"
            if budget is not None:
                budget.cut.append(f"seed ensemble of trial {trial.number}: {why}")
            return models, f"{have + len(models)} seeds: {why}"
    return models, f"{want} seeds: search.final_seeds"


def choose(rows: list[dict], up: bool) -> dict:
    """The finalist whose seeds all trained to a finite score with the best mean score, equal means broken by the
    lower mean validation loss; the first finalist when none did."""
    steady = [r for r in rows if r["mean"] is not None]
    if not steady:
        return rows[0]
    return min(steady, key=lambda r: (-r["mean"] if up else r["mean"],
                                      math.inf if r["val_loss_mean"] is None else r["val_loss_mean"]))


def _cut_at(trial: FrozenTrial) -> int | None:
    """The epochs a trial ran when the search's deadline ended it (None when it ended on its own)."""
    if str(trial.user_attrs.get("stop_reason") or "").startswith(Deadline.DEFAULT):
        return len(trial.user_attrs.get("history") or []) or None
    return None


def _with_seed(cfg: RunConfig, seed: int) -> RunConfig:
    return apply_overrides(cfg, {"seed": seed})


def _score(fit, monitor: str) -> float:
    if fit.stop_reason.startswith("non-finite"):
        return math.nan
    return float(fit.best.get(monitor, math.nan))
