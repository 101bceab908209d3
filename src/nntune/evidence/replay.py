"""Early-stopping policies replayed on recorded learning curves (question 10), with no retraining.

Evidence runs train for the full epoch count with early stopping off, so every curve is complete. Whether a policy
(monitor, patience, min_delta, restore) would have stopped, and which epoch's weights it would have kept, is then a
pure function of the curve: the LR schedule depends on the epoch count, not on the stop, so the epochs up to the stop
are the same with and without early stopping. The replay uses the training loops' own stop rule
(:class:`~nntune.training.epoch.StopRule`), and the score of any run under the chosen configuration's policy is read
off its full curve the same way, cross-fitted over the two halves of the validation split (:func:`score`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from nntune.config import EarlyStoppingConfig
from nntune.evidence.stats import equivalence_margin, format_diff, judge, paired_effect, verdict
from nntune.training.epoch import StopRule, non_finite

PATIENCES = (3, 5, 10, 20)
MIN_DELTAS = (1e-3, 1e-2)


@dataclass(frozen=True)
class Outcome:
    """Where a policy ends a curve: epochs trained, and the epoch whose weights the model keeps."""

    epochs: int
    kept_epoch: int


def diverged(history: Sequence[dict]) -> bool:
    """Whether a run hit a non-finite training or validation loss (the trainer stops there)."""
    return any(non_finite(row.get("epoch", 0), row) for row in history)


def replay(history: Sequence[dict], policy: EarlyStoppingConfig, monitor: str | None = None) -> Outcome:
    """The epoch a policy stops at on a full curve (``history`` rows numbered from 1) and the epoch it keeps, by the
    training loops' own :class:`~nntune.training.epoch.StopRule`: a row with a non-finite loss ends training without
    being seen by early stopping, and the best weights seen before it are restored (the last, diverged ones when
    there are none). ``monitor`` reads the policy's monitored value from another key (a half of the split)."""
    rule = StopRule(policy)
    for row in history:
        _, reason = rule.update(row["epoch"], row, value=row.get(monitor or policy.monitor, math.nan))
        if reason:
            return Outcome(row["epoch"], rule.kept_epoch(row["epoch"]))
    return Outcome(len(history), rule.kept_epoch(len(history)))


def half_key(key: str, half: str) -> str:
    """A validation key on one half of the split: ``val_loss`` -> ``val_a_loss`` (other keys are unchanged)."""
    return f"val_{half}_{key.removeprefix('val_')}" if key.startswith("val_") else key


def score(history: Sequence[dict], policy: EarlyStoppingConfig, metric: str) -> float:
    """``metric`` at the epoch the policy keeps (NaN for an empty curve), cross-fitted when the curve has the
    validation split's halves: the epoch the policy keeps watching half a is scored on half b and the other way
    round, and the two scores averaged. Choosing and scoring on the same samples would reward a policy that looks
    at more epochs (the best of more noisy values is higher even when nothing generalizes); cross-fitted, it gains
    nothing from that selection. Curves without halves (recorded by older versions) are scored in-sample."""
    if not history:
        return math.nan
    rows = {h["epoch"]: h for h in history}
    if half_key(metric, "a") not in history[0]:
        return float(rows.get(replay(history, policy).kept_epoch, {}).get(metric, math.nan))
    scores = []
    for pick, other in (("a", "b"), ("b", "a")):
        kept = replay(history, policy, half_key(policy.monitor, pick)).kept_epoch
        scores.append(float(rows.get(kept, {}).get(half_key(metric, other), math.nan)))
    return statistics.fmean(scores)


def policy_name(policy: EarlyStoppingConfig) -> str:
    if not policy.enabled:
        return "off"
    delta = f", min_delta {policy.min_delta:g}" if policy.min_delta else ""
    return f"patience {policy.patience}{delta}"


def policies(chosen: EarlyStoppingConfig) -> list[EarlyStoppingConfig]:
    """Off, patience 3/5/10/20 and two min_delta values at the chosen patience (the chosen policy itself removed)."""
    base = chosen.model_copy(update={"enabled": True})
    out = [chosen.model_copy(update={"enabled": False})]
    out += [base.model_copy(update={"patience": p}) for p in PATIENCES]
    out += [base.model_copy(update={"min_delta": d}) for d in MIN_DELTAS]
    seen, unique = {policy_name(chosen)}, []
    for p in out:
        if policy_name(p) not in seen:
            seen.add(policy_name(p))
            unique.append(p)
    return unique


def early_stopping_evidence(curves: Sequence[Sequence[dict]], chosen: EarlyStoppingConfig, metric: str,
                            maximize: bool, points: bool, resolution: float = 0.0) -> dict:
    """Question 10: every policy replayed on every full curve (runs that diverged are left out), its score paired
    with the chosen policy's on the same curve, and the epochs it trains (``epochs_saved`` is against training to
    the end); ``resolution`` as in :func:`~nntune.evidence.stats.paired_effect`. The curves come from all the
    evidence runs around the chosen configuration, and each counts as one pair."""
    finished = [c for c in curves if c]
    full_curves = [c for c in finished if not diverged(c)]
    curves = [c for c in full_curves if math.isfinite(score(c, chosen, metric))]
    chosen_name = policy_name(chosen)
    if not curves:
        why = ("every evidence run diverged (a non-finite loss)" if finished else
               "no evidence run finished within the time budget; give --evidence-budget more time")
        return {"verdict": f"Not measured: {why}, so there are no curves to replay.", "chosen": chosen_name,
                "variants": [], "skipped": []}
    full = max(len(c) for c in curves)
    ref = [score(c, chosen, metric) for c in curves]
    ref_epochs = statistics.fmean(replay(c, chosen).epochs for c in curves)
    rows, effects, epochs = [], {}, {}
    for p in policies(chosen):
        scores = [score(c, p, metric) for c in curves]
        pairs = [(s, r) for s, r in zip(scores, ref) if math.isfinite(s)]
        name = policy_name(p)
        epochs[name] = statistics.fmean(replay(c, p).epochs for c in curves)
        row = {"name": name, "mean": None, "diff": None, "ci_low": None, "ci_high": None, "n": len(pairs),
               "seconds": 0.0, "epochs": round(epochs[name], 2), "epochs_saved": round(full - epochs[name], 2)}
        if pairs:
            effect = paired_effect([s for s, _ in pairs], [r for _, r in pairs], resolution=resolution)
            effects[name] = effect
            row.update(mean=statistics.fmean(s for s, _ in pairs), diff=effect.mean, ci_low=effect.ci_low,
                       ci_high=effect.ci_high)
        rows.append(row)
    margin = equivalence_margin(points, resolution, statistics.fmean(ref))
    judgements = judge(effects, maximize, margin)
    for row in rows:
        if row["name"] in judgements:
            row.update(judgements[row["name"]].to_dict())
    lead = (f"The chosen {chosen_name} trains {ref_epochs:.1f} of {full} epochs on average "
            f"({100 * (1 - ref_epochs / full):.0f} % saved) over {len(curves)} full curves of the evidence runs. ")
    text = lead + verdict(chosen_name, judgements, points, metric, margin)
    cheaper = [n for n, j in judgements.items() if j.kind in ("better", "equivalent") and epochs[n] < ref_epochs]
    if cheaper:
        best = min(cheaper, key=epochs.get)
        text += (f" Fewest epochs shown no worse: {best} ({epochs[best]:.1f} epochs, "
                 f"{format_diff(effects[best].mean, points)}{' points' if points else ''}, "
                 f"{judgements[best].kind}).")
    return {"verdict": text, "chosen": chosen_name, "chosen_mean": statistics.fmean(ref),
            "chosen_epochs": round(ref_epochs, 2), "full_epochs": full, "margin": margin, "variants": rows,
            "skipped": []}
