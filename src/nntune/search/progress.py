"""Live search progress: a rich table of the latest trials, the budget used and the best so far, refreshed after
every population."""

from __future__ import annotations

from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from nntune.search.objectives import best_trial, score

if TYPE_CHECKING:
    from nntune.search.budget import Budget

STATE_STYLE = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan", "WAITING": "dim"}
STATE_WORD = {"COMPLETE": "done", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "queued"}
COLUMNS = {  # column -> the params it shows (the first one a trial has)
    "model": ("model.family",),
    "depth": ("model.hidden_layers", "model.conv_blocks"),
    "width": ("model.units", "model.filters"),
    "act": ("model.activation",),
    "lr": ("train.lr",),
    "sched": ("train.schedule.name",),
    "aug": ("preprocess.augment",),
}


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1e}" if abs(value) < 1e-2 and value else f"{value:.3g}"
    return str(value)


class LiveTrials:
    """A context manager; call ``refresh()`` whenever trials end."""

    def __init__(self, study: optuna.Study, budget: Budget, rows: int = 12, console: Console | None = None) -> None:
        self.study, self.budget, self.rows = study, budget, rows
        self.live = Live(self._render(), console=console or Console(stderr=True), refresh_per_second=2,
                         transient=False)

    def __enter__(self) -> LiveTrials:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self._render())
        self.live.__exit__(*exc)

    def refresh(self) -> None:
        self.live.update(self._render())

    def _render(self) -> Group:
        trials = self.study.get_trials(deepcopy=False)
        table = Table(title="nntune tune: trials", expand=False, box=box.SIMPLE_HEAD, show_edge=False,
                      padding=(0, 1, 0, 0))
        for col in ("#", "state", "value", *COLUMNS, "s"):
            table.add_column(col, no_wrap=True)
        for t in trials[-self.rows:]:
            state = t.state.name
            secs = t.user_attrs.get("seconds")
            shown = [next((_fmt(t.params[k]) for k in keys if k in t.params), "") for keys in COLUMNS.values()]
            table.add_row(str(t.number), Text(STATE_WORD.get(state, state.lower()), style=STATE_STYLE.get(state, "")),
                          _fmt(score(t)) if score(t) is not None else "-", *shown, f"{secs:.0f}" if secs else "-")
        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        b = self.budget
        line = f"{done}/{b.trials} finished" if b.trials else f"{done} finished"
        line += f"   {b.elapsed():.0f}s" + (f" of {b.timeout:.0f}s" if b.timeout else "")
        if b.stopped_by:
            line += f"   stopped by: {b.stopped_by}"
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if complete:
            best = best_trial(self.study)
            line += f"   best: trial {best.number} = {score(best):.4f}"
        line += "\n"
        return Group(table, Text(line, style="bold"))
