"""The statistics against scipy's tests and hand-computed adjustments; the verdicts' error rates on null data."""

import math
import random

import pytest
from scipy import stats as scipy_stats

from nntune.evidence.stats import (Effect, Judgement, equivalence_margin, format_effect, holm, judge, p_difference,
                                   p_equivalence, paired_effect, seeds_to_decide, verdict)

CASES = [
    ([0.91, 0.93, 0.92], [0.90, 0.90, 0.91]),
    ([0.5, 0.7, 0.6, 0.65, 0.55], [0.52, 0.61, 0.66, 0.60, 0.50]),
    ([1.2, 0.8, 1.9, 1.1], [1.0, 1.0, 1.0, 1.0]),
    ([3.0, -1.0], [0.0, 0.5]),
]


@pytest.mark.parametrize("variant,reference", CASES)
def test_interval_matches_scipy_paired_t_test(variant, reference):
    effect = paired_effect(variant, reference)
    oracle = scipy_stats.ttest_rel(variant, reference).confidence_interval(0.95)
    assert effect.n == len(variant)
    assert effect.mean == pytest.approx(sum(variant) / len(variant) - sum(reference) / len(reference))
    assert effect.ci_low == pytest.approx(oracle.low, rel=1e-12)
    assert effect.ci_high == pytest.approx(oracle.high, rel=1e-12)


def test_other_levels_match_scipy():
    variant, reference = CASES[1]
    oracle = scipy_stats.ttest_rel(variant, reference).confidence_interval(0.8)
    effect = paired_effect(variant, reference, level=0.8)
    assert (effect.ci_low, effect.ci_high) == (pytest.approx(oracle.low), pytest.approx(oracle.high))


def test_identical_scores_give_an_interval_around_zero():
    effect = paired_effect([0.9, 0.8, 0.95], [0.9, 0.8, 0.95])
    assert effect.ci_low == 0 == effect.ci_high and p_difference(effect) == 1.0
    widened = paired_effect([0.9, 0.8, 0.95], [0.9, 0.8, 0.95], resolution=0.01)
    assert widened.ci_low < 0 < widened.ci_high and p_difference(widened) == 1.0


def test_resolution_floors_the_spread_of_discrete_differences():
    # three seeds that each differ by exactly one validation sample of 100: a zero spread is not evidence
    variant, reference = [0.91, 0.81, 0.71], [0.90, 0.80, 0.70]
    assert paired_effect(variant, reference).ci_low > 0
    effect = paired_effect(variant, reference, resolution=0.01)
    half = scipy_stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)
    assert effect.ci_low == pytest.approx(0.01 - half) and effect.ci_low < 0
    # a real spread larger than the resolution is left alone
    floored, plain = paired_effect(CASES[1][0], CASES[1][1], resolution=1e-6), paired_effect(*CASES[1])
    assert (floored.ci_low, floored.ci_high, floored.se_equivalence) == (plain.ci_low, plain.ci_high,
                                                                         plain.se_equivalence)


def test_one_pair_has_no_interval_and_bad_input_is_rejected():
    effect = paired_effect([0.9], [0.8])
    assert effect.ci_low is None and effect.n == 1 and p_difference(effect) == 1.0
    with pytest.raises(ValueError, match="equal lengths"):
        paired_effect([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no pairs"):
        paired_effect([], [])


def _effect(mean, lo, hi, n):
    """An effect whose 95 % interval is lo..hi (the spread read back from the half-width)."""
    spread = None if lo is None else (hi - lo) / 2 * math.sqrt(n) / scipy_stats.t.ppf(0.975, n - 1)
    return Effect(mean, n, spread)


def _judged(kind, mean, lo, hi, n, p=0.01, more=None):
    return Judgement(_effect(mean, lo, hi, n), kind, p, p, more)


def test_verdicts():
    same = _judged("equivalent", 0.001, -0.003, 0.005, 3)
    better = _judged("better", 0.009, 0.004, 0.014, 5, p=0.004)
    worse = _judged("worse", -0.02, -0.03, -0.01, 3)
    wide = _judged("inconclusive", -0.26, -0.535, 0.017, 3, p=0.06, more=4)
    text = verdict("none", {"after_pool": better, "before_fc": same}, points=True)
    assert text == "after_pool beats the chosen none (+0.9 points, 95 % CI +0.4..+1.4, n=5, adjusted p=0.004)."
    assert verdict("relu", {"gelu": same}, points=True, margin=0.01) == \
        "The chosen relu is as good as the alternatives: gelu equivalent (within ±1.0 points)."
    assert verdict("relu", {"tanh": worse}, points=True).startswith("The chosen relu is best: tanh worse (closest: tanh")
    text = verdict("relu", {"tanh": worse, "gelu": same}, points=True, margin=0.01)
    assert text.startswith("The chosen relu is best or tied") and "gelu equivalent (within ±1.0 points)" in text
    # the -26-point case the issue quotes: never "no difference", always the effect and what would decide it
    text = verdict("zscore", {"none": wide, "minmax": same}, points=True, margin=0.01)
    assert text == ("Nothing beats the chosen zscore yet: minmax equivalent (within ±1.0 points); inconclusive: "
                    "none -26.0 points at n=3: ~4 more seeds would decide.")
    unknown = _judged("inconclusive", 0.1, None, None, 1, p=1.0)
    assert "one seed gives no interval" in verdict("a", {"b": unknown}, points=True)
    # minimizing a loss: the judgement carries the direction; the sentence reports it
    assert verdict("zscore", {"none": _judged("better", -0.5, -0.7, -0.3, 3)}, points=False) \
        .startswith("none beats the chosen zscore (-0.5, 95 % CI -0.7..-0.3, n=3")
    assert verdict("a", {}, points=True) == "Nothing to compare: only the chosen a ran."
    assert format_effect(_effect(0.5, None, None, 1), points=False) == "+0.5, n=1"
    assert format_effect(_effect(-0.5, -0.7, -0.3, 3), points=False, metric="val_loss") == \
        "val_loss -0.5, 95 % CI -0.7..-0.3, n=3"


@pytest.mark.parametrize("variant,reference", CASES)
def test_p_values_match_scipy(variant, reference):
    effect = paired_effect(variant, reference)
    assert p_difference(effect) == pytest.approx(scipy_stats.ttest_rel(variant, reference).pvalue, rel=1e-9)
    diffs = [v - r for v, r in zip(variant, reference)]
    margin = 0.05
    lower = scipy_stats.ttest_1samp(diffs, -margin, alternative="greater").pvalue
    upper = scipy_stats.ttest_1samp(diffs, margin, alternative="less").pvalue
    assert p_equivalence(effect, margin) == pytest.approx(max(lower, upper), rel=1e-9)


def test_holm_matches_hand_computed_adjustments():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5})
    # sorted a, c, b, d: 4·0.01, 3·0.03, max(0.09, 2·0.04), max(0.09, 0.5)
    assert adjusted == pytest.approx({"a": 0.04, "c": 0.09, "b": 0.09, "d": 0.5})
    assert holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}
    assert holm({}) == {}


def test_margin_defaults():
    assert equivalence_margin(True, 1 / 50, 0.9) == 0.02  # one sample of 50 is more than a point
    assert equivalence_margin(True, 1 / 500, 0.9) == 0.01
    assert equivalence_margin(False, 0.0, -2.0) == pytest.approx(0.02)


def test_four_verdicts_each_earned():
    # identical scores on 3 seeds of a 400-sample validation split: equivalent within the 1-point margin
    same = paired_effect([0.9, 0.8, 0.85], [0.9, 0.8, 0.85], resolution=1 / 400)
    big = paired_effect([0.95, 0.96, 0.94], [0.70, 0.72, 0.69], resolution=1 / 200)
    bad = paired_effect([0.60, 0.62, 0.61], [0.90, 0.91, 0.92], resolution=1 / 200)
    unsteady = paired_effect([0.74, 0.30, 0.90], [1.00, 0.98, 0.99], resolution=1 / 200)  # about -34 points
    j = judge({"same": same, "big": big, "bad": bad, "unsteady": unsteady}, maximize=True, margin=0.01)
    assert {k: v.kind for k, v in j.items()} == {"same": "equivalent", "big": "better", "bad": "worse",
                                                 "unsteady": "inconclusive"}
    assert j["unsteady"].more_seeds is not None and j["unsteady"].more_seeds >= 1
    assert j["same"].more_seeds is None and j["big"].p < 0.05 <= j["unsteady"].p
    # minimizing: a lower loss is the better one
    assert judge({"x": bad}, maximize=False, margin=0.01)["x"].kind == "better"


def test_the_seed_estimate_decides_when_the_effect_holds():
    effect = paired_effect([0.74, 0.30, 0.90], [1.00, 0.98, 0.99])
    extra = seeds_to_decide(effect, 0.01, 0.05)
    spread, n = effect.se * math.sqrt(3), 3 + extra
    assert abs(effect.mean) / (spread / math.sqrt(n)) >= scipy_stats.t.ppf(0.975, n - 1)
    n -= 1  # one seed fewer would not have decided
    assert abs(effect.mean) / (spread / math.sqrt(n)) < scipy_stats.t.ppf(0.975, n - 1)
    # a zero mean with a wide spread needs more seeds than the cap to show equivalence
    assert seeds_to_decide(paired_effect([0.5, 0.7, 0.6], [0.6, 0.6, 0.6]), 0.001, 0.05) is None


def _null_question(rng: random.Random, variants: int = 4, seeds: int = 3, n_val: int = 100) -> dict:
    """One question on data where nothing can matter: every variant's and the reference's accuracies are
    independent draws of the same binomial (random labels on a 100-sample split)."""
    def acc() -> float:
        return sum(rng.random() < 0.5 for _ in range(n_val)) / n_val

    ref = [acc() for _ in range(seeds)]
    effects = {f"v{i}": paired_effect([acc() for _ in range(seeds)], ref, resolution=1 / n_val)
               for i in range(variants)}
    return judge(effects, maximize=True, margin=equivalence_margin(True, 1 / n_val, sum(ref) / seeds))


def test_null_data_gives_no_better_or_worse_verdict():
    """20 seeded runs of one question's statistics on null data: no better/worse verdict; and over 400 the
    family-wise rate of any better/worse verdict stays at Holm's 5 % (binomial upper bound 8 %)."""
    rng = random.Random(0)
    firsts = [_null_question(rng) for _ in range(20)]
    assert not any(j.kind in ("better", "worse") for q in firsts for j in q.values())
    rng = random.Random(1)
    hits = sum(any(j.kind in ("better", "worse") for j in _null_question(rng).values()) for _ in range(400))
    assert hits / 400 <= 0.08


def test_a_configuration_compared_with_itself_is_never_better_or_worse():
    rng = random.Random(2)
    for _ in range(20):
        scores = [rng.random() for _ in range(3)]
        j = judge({"itself": paired_effect(scores, scores, resolution=0.01)}, maximize=True, margin=0.01)
        assert j["itself"].kind == "equivalent"
