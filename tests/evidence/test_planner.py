"""The budget plan against hand-computed figures: what fits, which questions that answers, what would answer all."""

from nntune.config import RunConfig
from nntune.evidence.ablations import Variant
from nntune.evidence.planner import plan_budget
from nntune.evidence.runner import CostModel, Unit


def _unit(question: str, name: str, weight: float = 1.0) -> Unit:
    return Unit(RunConfig(), variants=[Variant(question, name, {}, 0)], weight=weight)


def _cost(per_run: float) -> CostModel:
    cost = CostModel()
    cost.record([Unit(RunConfig())], 3, 3 * per_run)  # the probe: 3 runs of the reference
    return cost


def test_what_the_budget_buys():
    # first variants of dropout, lr, depth; then a second lr and a heavy depth variant
    units = [_unit("dropout", "none"), _unit("lr", "x3"), _unit("depth", "+1", 2.0), _unit("lr", "x1/3"),
             _unit("depth", "+2", 4.0)]
    plan = plan_budget(units, 3, _cost(1.0), probe_seconds=3.0, left=13.0,
                       questions=["dropout", "depth", "lr", "activation"])
    # 3 s + 3 s + 6 s = 12 s fit; the next 3 s do not (15 > 13), nor the 12 s one
    assert (plan.affordable, plan.planned_seconds, plan.variants) == (3, 12.0, 5)
    assert plan.answered == ["dropout", "depth", "lr"] and plan.unanswered == []  # activation has no variants
    assert plan.one_each_seconds == 12.0 and plan.all_seconds == 27.0
    assert "about 3 of 5 variants × 3 seeds (~12 s), answering every question asked" in plan.text(3)


def test_a_short_budget_says_what_would_answer_everything():
    units = [_unit("dropout", "none"), _unit("lr", "x3"), _unit("depth", "+1", 2.0)]
    plan = plan_budget(units, 3, _cost(2.0), probe_seconds=6.0, left=7.0, questions=["dropout", "lr", "depth"])
    assert plan.affordable == 1 and plan.answered == ["dropout"] and plan.unanswered == ["lr", "depth"]
    text = plan.text(3)
    assert "not answered: lr, depth" in text
    assert "--evidence-budget ≥ ~30 s" in text  # 6 s probe + 6 + 6 + 12 s for one variant of each question
    assert plan.to_dict()["one_each_seconds"] == 24.0
