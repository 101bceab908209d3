"""Paired differences with confidence intervals, the four verdicts they support, and error control per question.

Every variant of an ablation is trained with the same seeds as the chosen configuration, so its scores pair with the
chosen one's seed by seed; the effect is the mean of the per-seed differences, with a two-sided Student t-interval
(n - 1 degrees of freedom; the tests check it against ``scipy.stats.ttest_rel``). Each comparison ends in one of four
verdicts, each earned by a test:

- *better* / *worse*: the paired t-test rejects "no difference";
- *equivalent*: two one-sided tests (TOST) reject "the difference is outside ±margin", the region of practical
  equivalence (default: 1 point of accuracy or one validation sample, whichever is larger; 1 % of the chosen
  configuration's loss for other metrics); a difference that is real but inside the margin counts as equivalent;
- *inconclusive*: neither, worded with the effect and about how many more seeds would decide it.

Error control: the p-values of one question's comparisons are Holm-adjusted (family-wise error 5 % per question).
Holm rather than Benjamini–Hochberg because every comparison of a question shares the chosen configuration's runs,
so the tests are dependent in ways BH's guarantee does not cover, and Holm holds under any dependence; with the 2-8
comparisons of a question it costs little power against BH.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as _scipy_stats

ALPHA = 0.05
MAX_MORE_SEEDS = 30  # an inconclusive comparison that would need more is said to need "more than 30"
METHOD = "paired t-tests, Holm-adjusted within each question (5 % family-wise error)"
KINDS = ("better", "worse", "equivalent", "inconclusive")
RULE = ("Verdicts: better or worse when a paired t-test, Holm-adjusted within the question, rejects no difference "
        "at 5 %; equivalent when two one-sided tests place the difference within the margin (1 point or one "
        "validation sample of accuracy, 1 % of the loss otherwise); else inconclusive.")


@dataclass(frozen=True)
class Effect:
    """Mean of paired differences (variant - reference), their sample spread (None for n < 2) and the smallest step
    the score can take (``resolution``), from which the ``level`` interval and both tests' standard errors follow.

    The difference test and the interval floor the spread at one ``resolution`` step, so three seeds that each
    differ by exactly one validation sample do not make a zero-width interval and a verdict is never an artefact of
    a discrete metric. The equivalence test floors it at ``resolution / √6`` only, the spread of a difference of two
    scores rounded to that step: identical scores on every seed are then evidence of equivalence within a margin of
    at least one step, as they should be."""

    mean: float
    n: int
    spread: float | None
    resolution: float = 0.0
    level: float = 0.95

    @property
    def se(self) -> float | None:
        """The standard error of the mean difference for the interval and the difference test (None for n < 2)."""
        return None if self.spread is None else max(self.spread, self.resolution) / math.sqrt(self.n)

    @property
    def se_equivalence(self) -> float | None:
        """The standard error for the equivalence test (see the class docstring; None for n < 2)."""
        return None if self.spread is None else max(self.spread, self.resolution / math.sqrt(6)) / math.sqrt(self.n)

    @property
    def ci_low(self) -> float | None:
        return None if self.se is None else self.mean - self._half()

    @property
    def ci_high(self) -> float | None:
        return None if self.se is None else self.mean + self._half()

    def _half(self) -> float:
        return float(_scipy_stats.t.ppf(0.5 + self.level / 2, self.n - 1)) * self.se


@dataclass(frozen=True)
class Judgement:
    """One comparison's verdict (see :data:`KINDS`), its Holm-adjusted p-values and, when inconclusive, about how
    many more seeds would decide it (None: more than :data:`MAX_MORE_SEEDS`, or unknown at n = 1)."""

    effect: Effect
    kind: str
    p: float
    p_equivalent: float
    more_seeds: int | None = None

    def to_dict(self) -> dict:
        return {"verdict": self.kind, "p_adjusted": self.p, "p_equivalent_adjusted": self.p_equivalent,
                "more_seeds": self.more_seeds}


def paired_effect(variant: Sequence[float], reference: Sequence[float], level: float = 0.95,
                  resolution: float = 0.0) -> Effect:
    """The paired difference ``variant[i] - reference[i]``: its mean, spread and ``level`` t-interval.
    ``resolution`` is the smallest step the score can take (one validation sample of accuracy, 1/n_val; see
    :class:`Effect`). With 0 (the default) the interval and tests are the textbook ones, which the tests check
    against scipy."""
    if len(variant) != len(reference):
        raise ValueError(f"paired scores need equal lengths, got {len(variant)} and {len(reference)}")
    if not variant:
        raise ValueError("paired scores: no pairs")
    diffs = [float(v) - float(r) for v, r in zip(variant, reference)]
    spread = statistics.stdev(diffs) if len(diffs) > 1 else None
    return Effect(statistics.fmean(diffs), len(diffs), spread, resolution, level)


def p_difference(effect: Effect) -> float:
    """Two-sided p-value of "no difference" (the paired t-test; 1 for n < 2)."""
    se = effect.se
    if se is None:
        return 1.0
    if se == 0:
        return 0.0 if effect.mean != 0 else 1.0
    return float(2 * _scipy_stats.t.sf(abs(effect.mean) / se, effect.n - 1))


def p_equivalence(effect: Effect, margin: float) -> float:
    """TOST p-value of "the difference lies outside ±margin": the larger of the two one-sided tests (1 for n < 2)."""
    se = effect.se_equivalence
    if se is None:
        return 1.0
    if se == 0:
        return 0.0 if abs(effect.mean) < margin else 1.0
    df = effect.n - 1
    return float(max(_scipy_stats.t.sf((effect.mean + margin) / se, df),
                     _scipy_stats.t.cdf((effect.mean - margin) / se, df)))


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values (monotone, at most 1): reject where the adjusted value is below alpha."""
    adjusted, running, m = {}, 0.0, len(pvalues)
    for i, key in enumerate(sorted(pvalues, key=pvalues.get)):
        running = max(running, min(1.0, (m - i) * pvalues[key]))
        adjusted[key] = running
    return adjusted


def equivalence_margin(points: bool, resolution: float, reference_mean: float | None) -> float:
    """The default region of practical equivalence: 1 point or one validation sample of accuracy, whichever is
    larger; for other metrics 1 % of the chosen configuration's mean (its loss)."""
    if points:
        return max(0.01, resolution)
    return 0.01 * abs(reference_mean) if reference_mean else 0.0


def seeds_to_decide(effect: Effect, margin: float, alpha: float) -> int | None:
    """About how many more seeds would decide an inconclusive comparison if its mean and spread held: the fewest
    that make either the difference or the equivalence test pass at ``alpha`` (None beyond
    :data:`MAX_MORE_SEEDS` or at n = 1)."""
    if effect.spread is None:
        return None
    d, root_n = abs(effect.mean), math.sqrt(effect.n)
    spread, spread_eq = effect.se * root_n, effect.se_equivalence * root_n
    for extra in range(1, MAX_MORE_SEEDS + 1):
        n = effect.n + extra
        if spread == 0 or d / (spread / math.sqrt(n)) >= _scipy_stats.t.ppf(1 - alpha / 2, n - 1):
            return extra
        if d < margin and (spread_eq == 0 or (margin - d) / (spread_eq / math.sqrt(n))
                           >= _scipy_stats.t.ppf(1 - alpha, n - 1)):
            return extra
    return None


def judge(effects: dict[str, Effect], maximize: bool, margin: float, alpha: float = ALPHA) -> dict[str, Judgement]:
    """The verdict of each comparison of one question, Holm-adjusted over the question's comparisons."""
    if not effects:
        return {}
    p = holm({k: p_difference(e) for k, e in effects.items()})
    p_eq = holm({k: p_equivalence(e, margin) for k, e in effects.items()})
    out = {}
    for k, e in effects.items():
        more = None
        if p_eq[k] < alpha:
            kind = "equivalent"
        elif p[k] < alpha:
            kind = "better" if (e.mean > 0) == maximize else "worse"
        else:
            kind = "inconclusive"
            more = seeds_to_decide(e, margin, alpha / len(effects))
        out[k] = Judgement(e, kind, p[k], p_eq[k], more)
    return out


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


def format_margin(margin: float, points: bool) -> str:
    return f"±{100 * margin:.1f} points" if points else f"±{margin:.3g}"


def _undecided(name: str, j: Judgement, points: bool) -> str:
    """``sigmoid -26.0 points at n=3: ~4 more seeds would decide``."""
    e = j.effect
    unit = " points" if points else ""
    if j.more_seeds is None:
        need = ("one seed gives no interval" if e.n < 2 else
                f"more than {MAX_MORE_SEEDS} more seeds would be needed at this spread")
    else:
        need = f"~{j.more_seeds} more seed{'s' if j.more_seeds > 1 else ''} would decide"
    return f"{name} {format_diff(e.mean, points)}{unit} at n={e.n}: {need}"


def verdict(chosen: str, judgements: dict[str, Judgement], points: bool, metric: str = "",
            margin: float = 0.0) -> str:
    """One sentence from a question's judgements: the best alternative that is better, else the chosen one's
    standing against those that are worse, equivalent or still inconclusive."""
    if not judgements:
        return f"Nothing to compare: only the chosen {chosen} ran."
    by = {kind: {k: j for k, j in judgements.items() if j.kind == kind} for kind in KINDS}
    if by["better"]:
        name, j = max(by["better"].items(), key=lambda kv: abs(kv[1].effect.mean))
        others = f" ({len(by['better']) - 1} other alternative(s) also better)" if len(by["better"]) > 1 else ""
        return (f"{name} beats the chosen {chosen} ({format_effect(j.effect, points, metric)}, adjusted "
                f"p={j.p:.2g}){others}.")
    parts = []
    if by["worse"]:
        closest, j = min(by["worse"].items(), key=lambda kv: abs(kv[1].effect.mean))
        parts.append(f"{_names(by['worse'])} worse (closest: {closest}, {format_effect(j.effect, points, metric)})")
    if by["equivalent"]:
        parts.append(f"{_names(by['equivalent'])} equivalent (within {format_margin(margin, points)})")
    if by["inconclusive"]:
        ranked = sorted(by["inconclusive"].items(), key=lambda kv: -abs(kv[1].effect.mean))
        shown = "; ".join(_undecided(k, j, points) for k, j in ranked[:3])
        rest = f"; {len(ranked) - 3} more" if len(ranked) > 3 else ""
        parts.append(f"inconclusive: {shown}{rest}")
    if by["inconclusive"]:
        lead = f"Nothing beats the chosen {chosen} yet"
    elif by["worse"] and by["equivalent"]:
        lead = f"The chosen {chosen} is best or tied"
    elif by["worse"]:
        lead = f"The chosen {chosen} is best"
    else:
        lead = f"The chosen {chosen} is as good as the alternatives"
    return f"{lead}: {'; '.join(parts)}."


def _names(items: dict, limit: int = 5) -> str:
    """``a, b and c``, or the first three and a count when there are many."""
    names = list(items)
    if len(names) > limit:
        return ", ".join(names[:3]) + f" and {len(names) - 3} others"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
