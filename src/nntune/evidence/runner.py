"""Training the evidence's configurations over seeds within the time budget: the first seeds for every unit, most
informative first, then (adaptive seeds) further seeds for the units whose comparisons are still inconclusive.

Every run trains the full epoch count with early stopping off and logs the validation split's halves, so its score
is the chosen early-stopping policy replayed on its curve, cross-fitted (:func:`nntune.evidence.replay.score`).
Units of one structure train together as one population while the estimated cost fits the time left.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from nntune.config import EarlyStoppingConfig, RunConfig, apply_overrides
from nntune.evidence.ablations import Variant
from nntune.evidence.replay import score
from nntune.training.callbacks import TimeLimit
from nntune.training.context import RunContext
from nntune.training.pipeline import fit_configs
from nntune.training.population.structure import structure_key


@dataclass(eq=False)
class Unit:
    """One distinct configuration to run over the seeds (a variant, several identical variants, or the reference);
    ``seeds``, ``scores`` and ``curves`` are parallel lists, so a score pairs with the reference's by seed."""

    config: RunConfig
    variants: list[Variant] = field(default_factory=list)
    weight: float = 1.0  # relative cost of one run of it (parameter count against the reference)
    seeds: list[int] = field(default_factory=list)
    scores: list[float] | None = None
    curves: list[list[dict]] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str | None = None

    def by_seed(self) -> dict[int, float]:
        return dict(zip(self.seeds, self.scores or []))


class CostModel:
    """Seconds a set of runs will take, from the units that ran alone so far (the reference always does): their
    measured seconds per run per unit of weight (a model with 4× the parameters counts 2×: small models are
    dominated by fixed per-step costs), times the weights. A group is estimated as the sum of its units run alone,
    an upper bound where populations pay (a GPU), so the plan errs on the careful side."""

    def __init__(self) -> None:
        self.observed: list[float] = []

    def estimate(self, units: Sequence[Unit], runs: int) -> float:
        if not self.observed:
            return 0.0
        return statistics.fmean(self.observed) * sum(u.weight for u in units) * runs

    def record(self, units: Sequence[Unit], runs: int, seconds: float) -> None:
        if len(units) == 1:
            self.observed.append(seconds / runs / units[0].weight)


class Runner:
    """Runs units over seeds on ``context``'s data until ``deadline`` (in ``clock`` seconds), with one cost model
    and one progress bar for all its phases."""

    def __init__(self, context: RunContext, policy: EarlyStoppingConfig, deadline: float, progress: bool,
                 clock: Callable[[], float], resplit: bool = False) -> None:
        self.context, self.policy, self.deadline, self.clock = context, policy, deadline, clock
        self.resplit = resplit  # each seed trains on its own train/validation split (the same for every unit)
        self.cost = CostModel()
        self.bar = _Bar() if progress else None
        self.runs = 0
        self.first_seconds = 0.0  # what the first seeds of every unit took (the plan's estimate is checked on it)

    def left(self) -> float:
        return self.deadline - self.clock()

    def first_seeds(self, units: list[Unit], seeds: list[int],
                    on_probe: Callable[[float], None] | None = None) -> None:
        """Every unit with ``seeds``, in order (the reference first); a unit whose estimated cost no longer fits the
        time left is skipped, and later units of the same structure join a population while they fit.
        ``on_probe(seconds)`` is called once the reference has run (the probe the plan is made from)."""
        reference, queue = units[0] if units else None, list(units)
        self._grow(len(units) * len(seeds))
        started = self.clock()
        while queue:
            if on_probe is not None and reference is not None and queue[0] is not reference and reference.scores:
                on_probe(reference.seconds)
                on_probe = None
            unit, left = queue.pop(0), self.left()
            if unit is not reference and self.cost.estimate([unit], len(seeds)) > left:
                unit.skipped = "time budget"
                self._advance(len(seeds))
                continue
            group = self._group(unit, queue, len(seeds), left)
            for u, ran in self._run(group, seeds).items():
                if not ran:
                    u.skipped = "time budget (cut during its runs)"
        self.first_seconds = self.clock() - started

    def more_seeds(self, reference: Unit, units: list[Unit], seeds: Sequence[int]) -> list[Unit]:
        """Adaptive seeds: one more seed per round for the reference and ``units`` (in their order, those whose
        estimated cost fits the time left), until the seeds or the time run out. Returns the units that got at
        least one. The units are chosen before any of these runs and extended alike, whatever their interim
        effects: choosing by the effect would bias the test that follows (see docs/evidence.md)."""
        grown: set[int] = set()
        for seed in seeds:
            need, left = self.cost.estimate([reference], 1), self.left()
            group = [reference]
            for u in units:
                extra = self.cost.estimate([u], 1)
                if need + extra <= left:
                    group.append(u)
                    need += extra
            if len(group) == 1:  # not even one unit fits beside the reference
                break
            self._grow(len(group))
            ran = self._run(group, [seed])
            if not ran[reference]:
                break
            grown |= {id(u) for u, ok in ran.items() if ok and u is not reference}
        return [u for u in units if id(u) in grown]

    def _run(self, group: list[Unit], seeds: list[int]) -> dict[Unit, bool]:
        """Train ``group`` × ``seeds`` (grouped into populations by structure) and record each unit's seeds, scores
        and curves; a unit whose runs the budget cut records nothing. Whether each unit's runs finished."""
        context = self.context
        if self.bar:
            self.bar.describe(group)
        cfgs = [apply_overrides(u.config, {"seed": s}) for u in group for s in seeds]
        # a round of extra seeds mixes families; measured once per family, before the clock starts: the probe is
        # not a cost of these runs, and the plan would scale it up to every variant
        size = min(context.population_size(u.config) for u in group)
        data_for = (lambda c: context.data_for(c, split_seed=c.seed)) if self.resplit else context.data_for
        for c in cfgs:  # each split and scaling prepared (and cached) before the clock starts, as the probe is
            data_for(c)
        limit = TimeLimit(self.left, "evidence budget")
        t0 = self.clock()
        fits = fit_configs(cfgs, data_for, size, [[limit] for _ in cfgs], val_halves=True)
        seconds = self.clock() - t0
        self.cost.record(group, len(seeds), seconds)
        done = {}
        for i, u in enumerate(group):
            mine = [fit for _, fit in fits[i * len(seeds):(i + 1) * len(seeds)]]
            done[u] = not any(f.stop_reason.startswith("evidence budget") for f in mine)
            if not done[u]:
                continue
            curves = [[{k: v for k, v in h.items() if k != "grad_norms"} for h in f.history] for f in mine]
            u.seeds += seeds
            u.curves += curves
            u.scores = (u.scores or []) + [score(c, self.policy, context.monitor) for c in curves]
            u.seconds += seconds * len(seeds) / len(cfgs)
            self.runs += len(mine)
        self._advance(len(cfgs))
        return done

    def _group(self, unit: Unit, queue: list[Unit], seeds: int, left: float) -> list[Unit]:
        """``unit`` and the later units of its structure that fill its population, taken out of ``queue``. A later
        unit joins only while the group's estimated cost plus that of every unit ahead of it in the queue fits the
        time ``left``, so pulling a unit forward never takes time from a more informative one. Before anything was
        measured, the unit runs alone."""
        group = [unit]
        if not self.cost.observed:
            return group
        size = self.context.population_size(unit.config)
        key, need, ahead = structure_key(unit.config), self.cost.estimate([unit], seeds), 0.0
        per_population = 1 if self.resplit else seeds  # each seed's split is its own population when resplit
        for other in list(queue):
            if (len(group) + 1) * per_population > size:
                break
            extra = self.cost.estimate([other], seeds)
            if structure_key(other.config) == key and need + extra + ahead <= left:
                group.append(other)
                queue.remove(other)
                need += extra
            else:
                ahead += extra
        return group

    def say(self, text: str) -> None:
        """A line for the user above the progress bar (nothing without one)."""
        if self.bar:
            self.bar.progress.console.print(text)

    def _grow(self, runs: int) -> None:
        if self.bar:
            self.bar.grow(runs)

    def _advance(self, runs: int) -> None:
        if self.bar:
            self.bar.advance(runs)

    def close(self) -> None:
        if self.bar:
            self.bar.stop()


class _Bar:
    """A rich progress bar over the planned runs, showing the variants in training."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("[bold]evidence"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                                 console=Console(stderr=True))
        self.progress.start()
        self.total = 0
        self.task = self.progress.add_task("evidence", total=0, status="")

    def grow(self, runs: int) -> None:
        self.total += runs
        self.progress.update(self.task, total=self.total)

    def describe(self, group: Sequence[Unit]) -> None:
        names = [f"{v.question}: {v.name}" for u in group for v in u.variants[:1]] or ["the chosen configuration"]
        shown = ", ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "")
        self.progress.update(self.task, status=shown)

    def advance(self, runs: int) -> None:
        self.progress.advance(self.task, runs)

    def stop(self) -> None:
        self.progress.stop()
