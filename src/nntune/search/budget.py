"""What ends a search: a trial cap, a time budget, or both (whichever comes first), and what the search keeps back.

``--trials`` alone means no time cap, ``--timeout`` alone no trial cap, neither means the default trial count. The
timeout is a hard cap on the whole ``tune`` command (final fit and report included): the search stops early enough
to leave the finalists' seed re-runs and the final fit their estimated time (re-estimated from every population's
measured time, at most a third of the budget), no population starts when what asking and recording one took last
time no longer fits, a population running at the search's deadline is cut early enough to record its trials by then
(its members keep the epochs they finished), and the finalists and the final fit have deadlines of their own, ahead of a
few seconds kept for the report. What a deadline cut is listed in ``cut``. result.json and the live table say which
limit ended the search and how much of the budget was used.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from nntune.config import DEFAULT_TRIALS, SearchConfig

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_RESERVE = 1 / 3  # the finalists and the final fit never take more than this share of a time budget
TAIL_SECONDS = 5.0  # kept after the final fit for result.json, the ensemble's test and the report (measured 3-4.4 s)
TAIL_SHARE = 0.15  # ... but never more than this share of a short budget
PROBE_SHARE = 0.1  # measuring a family's population size may take at most this share of the time left


def with_report(summary: dict, seconds: float) -> dict:
    """A budget's ``to_dict()`` with the report's ``seconds`` counted in: the report is part of the command."""
    used = summary["seconds"] + seconds
    return {**summary, "report_seconds": round(seconds, 2), "seconds": round(used, 2),
            "fraction_used": round(used / summary["timeout"], 3) if summary["timeout"] else None}


def count(study: optuna.Study, states: tuple = FINISHED) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


@dataclass
class Budget:
    """The limits of one search run; ``stopped_by`` says which one ended it (trials, timeout, grid, interrupted)."""

    trials: int | None
    timeout: float | None
    started: float = field(default_factory=time.monotonic)
    reserve: float = 0.0  # seconds kept for the finalists, the final fit and the tail
    overhead: float = 0.0  # seconds the last population spent outside training: asking its trials, recording them
    record: float = 0.0  # ... of which recording them (weights, attributes, tell), after its training ends
    stopped_by: str | None = None
    search_seconds: float | None = None
    cut: list[str] = field(default_factory=list)  # what a deadline shortened or skipped, in words
    ends: Callable[[], float] | None = None  # when the search must end (Unix time), asked anew each time: a Ray
    # worker's search ends when its launcher says (nntune.cluster.ray), whatever its own clock started from

    @property
    def tail(self) -> float:
        """Seconds kept after the final fit (result.json, the ensemble's test, the report)."""
        return 0.0 if self.timeout is None else min(TAIL_SECONDS, TAIL_SHARE * self.timeout)

    @property
    def finish_most(self) -> float:
        """The most the finalists and the final fit may ever take: the share of the timeout the reserve is capped at,
        less the tail (inf without a timeout)."""
        return math.inf if self.timeout is None else MAX_RESERVE * self.timeout - self.tail

    @classmethod
    def from_config(cls, search: SearchConfig, started: float | None = None) -> Budget:
        """The config's limits, counted from ``started`` (a ``time.monotonic()`` reading; default now)."""
        trials = search.trials if (search.trials or search.timeout) else DEFAULT_TRIALS
        budget = cls(trials, search.timeout, started=time.monotonic() if started is None else started)
        budget.keep_back(math.inf)  # the most, until trials have measured what the finishing steps will take
        return budget

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        """Seconds left of the whole budget (inf without a timeout)."""
        return math.inf if self.timeout is None else self.timeout - self.elapsed()

    def search_left(self) -> float:
        """Seconds left for search trials: the budget left minus the reserve (inf without a timeout), or what is left
        until ``ends()``."""
        if self.ends is not None:
            return min(self.ends() - time.time(), self.left() - self.reserve)
        return self.left() - self.reserve

    def training_left(self) -> float:
        """Seconds a population may still train: the search's time left minus what recording its trials will take
        (as the last population's did), so a population cut at this deadline ends with the search's."""
        return self.search_left() - self.record

    def finish_left(self) -> float:
        """Seconds left for the finalists and the final fit: the budget left minus the tail (inf without a
        timeout)."""
        return self.left() - self.tail

    def keep_back(self, seconds: float) -> None:
        """Reserve ``seconds`` plus the tail (capped at a third of the timeout) for what follows the search."""
        if self.timeout is not None:
            self.reserve = min(max(0.0, seconds) + self.tail, MAX_RESERVE * self.timeout)

    def trials_left(self, study: optuna.Study) -> int | float:
        """How many more trials this run may start: the cap minus the study's finished and running trials."""
        if self.trials is None:
            return math.inf
        return max(0, self.trials - count(study, (*FINISHED, TrialState.RUNNING)))

    def check(self, study: optuna.Study) -> str | None:
        """The limit reached now, if any (and remember it)."""
        if self.trials is not None and count(study) >= self.trials:
            self.stopped_by = "trials"
        elif self.search_left() <= self.overhead:  # a population started now would end past the search's time
            self.stopped_by = "timeout"
        return self.stopped_by

    def end_search(self, reason: str | None = None) -> None:
        self.stopped_by = reason or self.stopped_by
        self.search_seconds = self.elapsed()

    def to_dict(self) -> dict:
        used = self.elapsed()
        return {"trials": self.trials, "timeout": self.timeout, "stopped_by": self.stopped_by,
                "search_seconds": round(self.search_seconds if self.search_seconds is not None else used, 2),
                "seconds": round(used, 2),
                "fraction_used": round(used / self.timeout, 3) if self.timeout else None, "cut": list(self.cut)}
