"""Successive halving with continuation (``search.pruner: halving``): trials start with a small epoch budget and the
promising ones keep training, up to a top rung far above the usual trial length.

Every sampled trial trains under a schedule defined on the top rung (``search.max_epochs``), so continuing a member
past a rung changes nothing it has done: a member that reaches rung 2 holds exactly the weights of one trained
straight to rung 2 (the alternative, re-annealing at every rung, is measured in ``bench/rungs.py``; docs/search.md).
At each rung epoch (``first, first·η, first·η², …``) the members of a population record their best score so far
(a trial user attribute ``rung_<epoch>``) and then, once all have, each is compared with every trial of the study
that reached that rung (its population, earlier populations and other workers: asynchronous successive halving,
ASHA): the best ``max(1, n // η)`` of ``n`` continue, the others stop there and are told PRUNED, with their epochs
reported as ordinary Optuna intermediate values, so the sampler, the dashboard, resume and workers see real trials.
Optuna's own pruners decide per trial as it reports, so a population's first member would be judged before its
peers had trained; the decision here waits for the whole population (the engine's ``on_epochs_logged`` hook).
nntune's default trials (the search's floor) are never halved.

A promoted member's training state is saved at its rung (``OUT/rungs/<trial>/``, :mod:`nntune.training.resume`);
when a killed process leaves the trial running, its retry continues from there instead of from epoch 1, alone.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback

from nntune.config import SearchConfig
from nntune.search.objectives import maximize
from nntune.training import resume
from nntune.training.callbacks import Callback

ETA = 3  # 1 in 3 continues at each rung: Hyperband's and ASHA's usual reduction factor
RUNGS = 4  # the top rung is the first × η³ (some 9-10× the usual trial length)


def first_rung(trial_epochs: int, eta: int = ETA) -> int:
    """The first rung's epochs: about a third of the usual trial length (at least 2 epochs)."""
    return max(2, round(trial_epochs / eta))


def top_epochs(trial_epochs: int, max_epochs: int | None = None, eta: int = ETA) -> int:
    """The schedule's horizon and last rung: ``max_epochs`` when given, else the first rung × η³."""
    return max_epochs or first_rung(trial_epochs, eta) * eta ** (RUNGS - 1)


def sampled_epochs(search: SearchConfig, trial_epochs: int) -> int:
    """The epochs a sampled trial is configured for, its schedule's horizon: the top rung under halving, else the
    usual trial epochs."""
    return top_epochs(trial_epochs, search.max_epochs) if search.pruner == "halving" else trial_epochs


def rungs(trial_epochs: int, top: int, eta: int = ETA) -> list[int]:
    """The epochs where members are compared: first, first·η, ... below ``top`` (which ends training anyway)."""
    out, r = [], first_rung(trial_epochs, eta)
    while r < top:
        out.append(r)
        r *= eta
    return out


def rung_key(epoch: int) -> str:
    return f"rung_{epoch}"


def promoted(value: float, others: list[float], eta: int, larger_better: bool) -> tuple[bool, int]:
    """Whether ``value`` is among the best ``max(1, n // eta)`` of the ``n`` values at a rung (``others`` includes
    it), and its rank (1 = best). Ties go to the value being judged."""
    ordered = sorted(others, reverse=larger_better)
    keep = max(1, len(ordered) // eta)
    rank = 1 + sum(1 for v in ordered if (v > value if larger_better else v < value))
    return rank <= keep, rank


class RungBoard:
    """The study's values at each rung, read once per rung epoch for a whole population."""

    def __init__(self, study: optuna.Study, eta: int = ETA) -> None:
        self.study, self.eta = study, eta
        self.larger_better = maximize(study)
        self._cache: dict[int, list[float]] = {}

    def values(self, epoch: int) -> list[float]:
        if epoch not in self._cache:
            key = rung_key(epoch)
            # a crashed trial's values live on in its retry (which inherits its attributes): failed ones do not count
            self._cache = {epoch: [t.user_attrs[key] for t in self.study.get_trials(deepcopy=False)
                                   if key in t.user_attrs and t.state != optuna.trial.TrialState.FAIL]}
        return self._cache[epoch]


def state_dir(out: Path, number: int) -> Path:
    return Path(out) / "rungs" / str(number)


def saved_state(out: Path, study: optuna.Study, trial: optuna.Trial) -> tuple[int, resume.RunState] | None:
    """(trial number, state) of the last rung saved by the crashed trial(s) this one retries, or None."""
    frozen = study._storage.get_trial(trial._trial_id)  # retries are recorded in system attributes
    for number in reversed(RetryHeartbeatStaleTrialCallback.retry_history(frozen)):
        state = resume.load(state_dir(out, number))
        if state is not None:
            return number, state
    return None


def forget(out: Path, study: optuna.Study, trial: optuna.Trial) -> None:
    """Remove the saved states of a trial that ended and of the crashed trials it retried."""
    frozen = study._storage.get_trial(trial._trial_id)
    for number in [trial.number, *RetryHeartbeatStaleTrialCallback.retry_history(frozen)]:
        shutil.rmtree(state_dir(out, number), ignore_errors=True)


class Halving(Callback):
    """One member's rungs: record its best score so far at each rung, then continue or stop by :func:`promoted`;
    a member that continues saves its state under ``out`` (when given)."""

    def __init__(self, trial: optuna.Trial, monitor: str, board: RungBoard, rung_epochs: list[int],
                 out: Path | None = None) -> None:
        self.trial, self.monitor, self.board, self.out = trial, monitor, board, out
        self.rungs = set(rung_epochs)
        self.best = -math.inf if board.larger_better else math.inf
        self.halved_at: int | None = None
        self.exempt = bool(trial.user_attrs.get("default"))  # the search's floor trains to its own end

    def replay(self, history: list[dict]) -> None:
        """Pick up a continued trial: its best score over the epochs it already trained."""
        for row in history:
            self._track(row.get(self.monitor, math.nan))

    def _track(self, value: float) -> None:
        if math.isfinite(value):
            self.best = max(self.best, value) if self.board.larger_better else min(self.best, value)

    def on_epoch_end(self, trainer, epoch: int, logs: dict[str, float]) -> None:
        self._track(logs.get(self.monitor, math.nan))
        if epoch in self.rungs and math.isfinite(self.best) and not self.exempt:
            self.trial.set_user_attr(rung_key(epoch), self.best)

    def on_epochs_logged(self, trainer, epoch: int) -> None:
        if epoch not in self.rungs or self.exempt or trainer.stop_requested or not math.isfinite(self.best):
            return
        others = self.board.values(epoch)
        keep, rank = promoted(self.best, others, self.board.eta, self.board.larger_better)
        if keep and self.out is not None:
            resume.save(state_dir(self.out, self.trial.number), trainer.state())
        if not keep:
            self.halved_at = epoch
            trainer.stop(f"halved at epoch {epoch} (rank {rank} of {len(others)} at this rung; the best "
                         f"{max(1, len(others) // self.board.eta)} continue)")
