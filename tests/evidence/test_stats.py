import math

import pytest
from scipy import stats as scipy_stats

from nntune.evidence.stats import Effect, format_effect, paired_effect, verdict

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
    assert effect.ci_low == 0 == effect.ci_high and not effect.measurable
    widened = paired_effect([0.9, 0.8, 0.95], [0.9, 0.8, 0.95], resolution=0.01)
    assert widened.ci_low < 0 < widened.ci_high and not widened.measurable


def test_resolution_floors_the_spread_of_discrete_differences():
    # three seeds that each differ by exactly one validation sample of 100: a zero spread is not evidence
    variant, reference = [0.91, 0.81, 0.71], [0.90, 0.80, 0.70]
    assert paired_effect(variant, reference).measurable
    effect = paired_effect(variant, reference, resolution=0.01)
    half = scipy_stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)
    assert effect.ci_low == pytest.approx(0.01 - half) and not effect.measurable
    # a real spread larger than the resolution is left alone
    assert paired_effect(CASES[1][0], CASES[1][1], resolution=1e-6) == paired_effect(*CASES[1])


def test_one_pair_has_no_interval_and_bad_input_is_rejected():
    effect = paired_effect([0.9], [0.8])
    assert effect.ci_low is None and effect.n == 1 and not effect.measurable
    with pytest.raises(ValueError, match="equal lengths"):
        paired_effect([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no pairs"):
        paired_effect([], [])


def test_verdicts():
    same = Effect(0.001, -0.003, 0.005, 3)
    better = Effect(0.009, 0.004, 0.014, 5)
    worse = Effect(-0.02, -0.03, -0.01, 3)
    text = verdict("none", {"after_pool": better, "before_fc": same}, maximize=True, points=True)
    assert text == "after_pool beats the chosen none (+0.9 points, 95 % CI +0.4..+1.4, n=5)."
    text = verdict("relu", {"gelu": same}, maximize=True, points=True)
    assert text.startswith("No measurable difference between the chosen relu and gelu (n=3, CIs within -0.3..+0.5)")
    text = verdict("relu", {"tanh": worse}, maximize=True, points=True)
    assert text.startswith("The chosen relu is best: tanh measurably worse")
    text = verdict("relu", {"tanh": worse, "gelu": same}, maximize=True, points=True)
    assert "best or tied" in text and "no measurable difference to gelu" in text
    # minimizing a loss: a negative difference is the better one
    assert verdict("zscore", {"none": Effect(-0.5, -0.7, -0.3, 3)}, maximize=False, points=False) \
        .startswith("none beats the chosen zscore (-0.5, 95 % CI -0.7..-0.3, n=3)")
    assert format_effect(Effect(0.5, None, None, 1), points=False) == "+0.5, n=1"
    assert format_effect(Effect(-0.5, -0.7, -0.3, 3), points=False, metric="val_loss") == \
        "val_loss -0.5, 95 % CI -0.7..-0.3, n=3"
