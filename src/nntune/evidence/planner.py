"""What the evidence budget buys, said before the variants train: from the chosen configuration's own runs (the probe),
how many variants × seeds fit the time left, which questions that answers, and what budget would answer the rest.

The estimate is the runner's cost model (seconds per run of the probe, scaled by each variant's size), so what is
printed is what the runner will then do; ``bench/evidence_cost.py`` compares it with the time measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from nntune.evidence.runner import CostModel, Unit


@dataclass(frozen=True)
class BudgetPlan:
    """The plan after the probe: seconds are estimates except ``probe_seconds``."""

    probe_seconds: float
    left: float
    variants: int
    affordable: int  # variants that fit the time left, in the plan's order
    planned_seconds: float  # what the affordable variants will take
    one_each_seconds: float  # the first variant of every question
    all_seconds: float  # every variant
    answered: list[str]  # questions whose first variant fits
    unanswered: list[str]

    def to_dict(self) -> dict:
        return {k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def text(self, seeds: int) -> str:
        """One sentence for the user, before the variants train."""
        head = (f"Evidence plan: the chosen configuration's {seeds} runs took {self.probe_seconds:.0f} s; the "
                f"{self.left:.0f} s left buy about {self.affordable} of {self.variants} variants × {seeds} seeds "
                f"(~{self.planned_seconds:.0f} s)")
        if not self.unanswered:
            return f"{head}, answering every question asked; every variant would need ~{self.all_seconds:.0f} s."
        return (f"{head}; not answered: {', '.join(self.unanswered)}. One variant per question needs "
                f"--evidence-budget ≥ ~{self.probe_seconds + self.one_each_seconds:.0f} s, every variant "
                f"~{self.probe_seconds + self.all_seconds:.0f} s.")


def plan_budget(units: Sequence[Unit], seeds: int, cost: CostModel, probe_seconds: float, left: float,
                questions: Sequence[str]) -> BudgetPlan:
    """The plan for ``units`` (the variants' units in the order they will run, the reference excluded) with
    ``seeds`` each, given the cost model measured on the probe and the time ``left``; ``questions`` are those asked
    that need runs."""
    spent, affordable, answered = 0.0, 0, set()
    first_of: dict[str, Unit] = {}
    for u in units:
        for v in u.variants:
            first_of.setdefault(v.question, u)
        need = cost.estimate([u], seeds)
        if spent + need > left:
            continue  # as the runner does: a later, smaller variant may still fit
        spent += need
        affordable += 1
        answered |= {v.question for v in u.variants}
    firsts = {id(u): u for u in first_of.values()}.values()
    return BudgetPlan(probe_seconds, left, len(units), affordable, spent, cost.estimate(list(firsts), seeds),
                      cost.estimate(list(units), seeds), [q for q in questions if q in answered],
                      [q for q in questions if q in first_of and q not in answered])
