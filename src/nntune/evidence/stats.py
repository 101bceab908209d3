"""Paired differences with confidence intervals, and the one-sentence verdict they support.

Every variant of an ablation is trained with the same seeds as the chosen configuration, so its scores pair with the
chosen one's seed by seed; the effect is the mean of the per-seed differences, with a two-sided Student t-interval
(n - 1 degrees of freedom). The t quantile comes from scipy; the tests check the interval against
``scipy.stats.ttest_rel``. A difference is *measurable* when its interval excludes 0.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as _scipy_stats

METHOD = "paired t-interval"


@dataclass(frozen=True)
class Effect:
    """Mean of paired differences (variant - reference) and its confidence interval; ``ci_*`` are None for n < 2."""

    mean: float
    ci_low: float | None
    ci_high: float | None
    n: int

    @property
    def measurable(self) -> bool:
        return self.ci_low is not None and (self.ci_low > 0 or self.ci_high < 0)


def paired_effect(variant: Sequence[float], reference: Sequence[float], level: float = 0.95,
                  resolution: float = 0.0) -> Effect:
    """The paired difference ``variant[i] - reference[i]``: its mean and ``level`` t-interval.

    ``resolution`` is the smallest step the score can take (one validation sample of accuracy, 1/n_val): the spread
    of the differences is taken as at least that, so three seeds that each differ by exactly one sample do not make
    a zero-width interval, and a "measurable" difference is never an artefact of a discrete metric. With 0 (the
    default) the interval is the textbook one, which the tests check against scipy."""
    if len(variant) != len(reference):
        raise ValueError(f"paired scores need equal lengths, got {len(variant)} and {len(reference)}")
    if not variant:
        raise ValueError("paired scores: no pairs")
    diffs = [float(v) - float(r) for v, r in zip(variant, reference)]
    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return Effect(mean, None, None, n)
    spread = max(statistics.stdev(diffs), resolution)
    half = float(_scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * spread / math.sqrt(n)
    return Effect(mean, mean - half, mean + half, n)


def format_diff(value: float, points: bool) -> str:
    """A signed difference: accuracy in percentage points (``+0.9``), other metrics as they are."""
    return f"{100 * value:+.1f}" if points else f"{value:+.3g}"


def format_effect(effect: Effect, points: bool, metric: str = "") -> str:
    """``+0.9 points, 95 % CI +0.4..+1.4, n=5``, or ``val_loss -0.12, ...`` for other metrics (no interval for
    n=1)."""
    unit = " points" if points else ""
    name = f"{metric} " if metric and not points else ""
    ci = (f", 95 % CI {format_diff(effect.ci_low, points)}..{format_diff(effect.ci_high, points)}"
          if effect.ci_low is not None else "")
    return f"{name}{format_diff(effect.mean, points)}{unit}{ci}, n={effect.n}"


def verdict(chosen: str, effects: dict[str, Effect], maximize: bool, points: bool, metric: str = "") -> str:
    """One sentence: the best measurably better alternative, or the chosen one's standing against the rest."""
    if not effects:
        return f"Nothing to compare: only the chosen {chosen} ran."

    def gain(e: Effect) -> float:  # positive = better than the chosen configuration
        return e.mean if maximize else -e.mean

    better = {k: e for k, e in effects.items() if e.measurable and (e.ci_low > 0) == maximize}
    worse = {k: e for k, e in effects.items() if e.measurable and k not in better}
    same = {k: e for k, e in effects.items() if not e.measurable}
    if better:
        name, e = max(better.items(), key=lambda kv: gain(kv[1]))
        others = f" ({len(better) - 1} other alternative(s) also measurably better)" if len(better) > 1 else ""
        return f"{name} beats the chosen {chosen} ({format_effect(e, points, metric)}){others}."
    n = max(e.n for e in effects.values())
    if not worse:
        lo = min((e.ci_low for e in same.values() if e.ci_low is not None), default=None)
        hi = max((e.ci_high for e in same.values() if e.ci_high is not None), default=None)
        span = f", CIs within {format_diff(lo, points)}..{format_diff(hi, points)}" if lo is not None else ""
        return f"No measurable difference between the chosen {chosen} and {_names(same, '; ')} (n={n}{span})."
    closest, e = max(worse.items(), key=lambda kv: gain(kv[1]))
    text = (f"The chosen {chosen} is best: {_names(worse)} measurably worse (closest: {closest}, "
            f"{format_effect(e, points, metric)})")
    if same:
        lo = min((s.ci_low for s in same.values() if s.ci_low is not None), default=None)
        hi = max((s.ci_high for s in same.values() if s.ci_high is not None), default=None)
        span = f", CIs within {format_diff(lo, points)}..{format_diff(hi, points)}" if lo is not None else ""
        text = (f"The chosen {chosen} is best or tied: {_names(worse)} measurably worse (closest: {closest}, "
                f"{format_effect(e, points, metric)}); no measurable difference to {_names(same, '; ')} (n={n}{span})")
    return text + "."


def _names(effects: dict[str, Effect], sep: str = ", ", limit: int = 5) -> str:
    """``a, b and c`` (``a; b; c`` with ``sep="; "``), or the first three and a count when there are many."""
    names = list(effects)
    if len(names) > limit:
        return sep.join(names[:3]) + f"{sep}{len(names) - 3} others"
    if sep != ", ":
        return sep.join(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
