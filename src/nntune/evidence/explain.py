"""Run the evidence: controlled ablations × seeds around the chosen configuration, within a time budget.

Every variant (see :mod:`nntune.evidence.ablations`) and the chosen configuration itself train with the same S
seeds, with early stopping off for the full epoch count; each run's score is the chosen early-stopping policy replayed
on its curve (exactly what early stopping would have kept, see :mod:`nntune.evidence.replay`), so the same runs also
answer question 10. Differences to the chosen configuration are paired by seed (:mod:`nntune.evidence.stats`).
Variants whose configurations differ only in per-member settings (LR, dropout rates, seeds, ...) train together as
one population. Variants run most informative first (the first alternative of every question, then the second, ...)
while their estimated cost fits the time left; the rest are listed as skipped, and a run still going when the budget
ends is cut and its variant skipped too.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nntune import rundir
from nntune.artifacts import read_result, write_result
from nntune.config import (EVIDENCE_QUESTIONS, RunConfig, apply_overrides, build_config, check_questions,
                           load_config)
from nntune.data.sources import Dataset
from nntune.errors import ArtifactError, ConfigError
from nntune.evidence import ablations
from nntune.evidence.ablations import Variant
from nntune.evidence.replay import diverged as replay_diverged
from nntune.evidence.replay import early_stopping_evidence
from nntune.evidence.planner import plan_budget
from nntune.evidence.runner import Runner, Unit
from nntune.evidence.stats import (ALPHA, METHOD, RULE, Effect, Judgement, equivalence_margin, judge, paired_effect,
                                   verdict)
from nntune.models.builders import build_model
from nntune.models.inspect import summary
from nntune.storage import load_recorded_study
from nntune.training.context import RunContext
from nntune.training.pipeline import data_source, prepare_data, range_test

SEED_STRIDE = 104_729  # evidence seeds are chosen.seed + k * stride: fresh, none used by the search or finalists


def run_evidence(chosen: RunConfig, context: RunContext, seeds: int = 3, budget: float = 600.0,
                 questions: Sequence[str] | None = None, lr_suggestion: float | None = None,
                 progress: bool = False, clock: Callable[[], float] = time.perf_counter,
                 max_seeds: int | None = None, resplit: bool = False) -> dict:
    """Answer the questions with controlled variants of ``chosen`` on ``context``'s data split (the run's base split,
    scaled per variant); returns the ``evidence`` object of result.json: one entry per question plus ``setup``.
    ``budget`` is in seconds of ``clock`` (the tests pass a clock that ticks per call, to plan deterministically).
    With ``max_seeds`` above ``seeds``, the time left after every variant ran is spent on further seeds for the
    variants still inconclusive (adaptive seeds, two stages at half the error rate each; see docs/evidence.md).
    With ``resplit``, seed i trains every configuration on the i-th redrawn train/validation split (the test split
    kept), so the answer holds for the data rather than for one split."""
    started = clock()
    deadline = started + budget
    questions = check_questions(questions)
    if seeds < 2:
        raise ConfigError(f"evidence.seeds: at least 2 seeds are needed for a confidence interval, got {seeds}")
    max_seeds = seeds if max_seeds is None else max_seeds
    if max_seeds < seeds:
        raise ConfigError(f"evidence.max_seeds: must be at least evidence.seeds ({seeds}), got {max_seeds}")
    if not budget > 0:
        raise ConfigError(f"evidence.budget: must be a positive number of seconds, got {budget}")
    ds = context.base_data.dataset
    maximize = points = ds.task == "classification"
    resolution = 1 / len(context.base_data.split.val) if points else 0.0  # accuracy moves in steps of one sample
    base = apply_overrides(chosen, {"train.early_stopping.enabled": False, "train.lr_auto": False})
    seed_list = [chosen.seed + SEED_STRIDE * (i + 1) for i in range(max_seeds)]
    first, extra = seed_list[:seeds], seed_list[seeds:]
    if "lr" in questions and lr_suggestion is None:
        lr_suggestion = _range_test(base, context)
    made = ablations.variants(base, ds.kind, lr_suggestion)
    reference, units, valid, skipped = _plan(base, made, questions, context)
    ranked = ablations.order(valid, EVIDENCE_QUESTIONS)
    plan = [reference] + list({id(u): u for u in (units[v.key()] for v in ranked)}.values())
    tuned = base.finetune.init_from is not None  # then question 1 has experiments (freezing variants)
    needs_runs = tuned or any(q != "trainable" for q in questions)
    stages = Stages(set(first), ALPHA / 2 if extra else ALPHA, maximize, points, resolution)
    runner = Runner(context, chosen.train.early_stopping, deadline, progress, clock, resplit)
    interrupted, budget_plan = False, None

    def announce(probe_seconds: float) -> None:
        nonlocal budget_plan
        asked = [q for q in questions if q in valid and valid[q]]
        budget_plan = plan_budget(plan[1:], seeds, runner.cost, probe_seconds, runner.left(), asked)
        runner.say(budget_plan.text(seeds))

    try:
        runner.first_seeds(plan if needs_runs else [], first, announce)
        if extra and reference.scores:
            open_units = stages.inconclusive(valid, units, reference)
            undecided = [u for u in plan[1:] if u in open_units]  # in the plan's order, not by their effects
            stages.extended = runner.more_seeds(reference, undecided, extra)
    except KeyboardInterrupt:
        interrupted = True
        for u in plan:
            if u.scores is None and u.skipped is None:
                u.skipped = "interrupted"
    finally:
        runner.close()
    result = {}
    for q in (q for q in EVIDENCE_QUESTIONS if q in questions):
        if q == "trainable" and not tuned:
            result[q] = _trainable(base, context)
        elif q == "early_stopping":
            curves = [c for u in plan if u.scores is not None for c in u.curves]
            result[q] = early_stopping_evidence(curves, chosen.train.early_stopping, context.monitor, maximize,
                                                points, resolution)
        else:
            result[q] = _answer(q, base, context, made, valid, skipped, units, reference, stages)
    n_skipped = sum(1 for u in units.values() if u.skipped)
    used = [s for s in extra if s in reference.seeds]
    result["setup"] = {
        "seeds": first, "method": f"{METHOD}; intervals 95 %, paired by seed", "rule": RULE,
        "metric": context.monitor, "maximize": maximize, "points": points, "budget": budget,
        "seconds": round(clock() - started, 2), "runs": runner.runs, "variants": len(units), "skipped": n_skipped,
        "interrupted": interrupted, "resolution": resolution, "lr_suggestion": lr_suggestion, "resplit": resplit,
        "plan": budget_plan and {**budget_plan.to_dict(), "measured_seconds": round(runner.first_seconds, 1)},
        "adaptive": {"max_seeds": max_seeds, "extra_seeds": used, "extended": len(stages.extended),
                     "alpha_per_stage": stages.alpha if extra else None},
        "chosen_config": base.to_dict(),
        "score": f"{context.monitor} at the epoch the chosen early-stopping policy keeps, on the validation split "
                 "(chosen on one half, scored on the other, both ways)"
                 + ("; each seed with its own train/validation split" if resplit else ""),
    }
    return result


@dataclass
class Stages:
    """The two stages of adaptive seeds: every comparison is judged on the first seeds at ``alpha``; those still
    inconclusive whose units got further seeds are judged again on all their seeds, at ``alpha`` too (ALPHA / 2
    each when there is a second stage, so the two together keep the family-wise error at ALPHA)."""

    first: set[int]
    alpha: float
    maximize: bool
    points: bool
    resolution: float
    extended: list[Unit] = field(default_factory=list)

    def pairs(self, unit: Unit, reference: Unit, first_only: bool) -> list[tuple[float, float]]:
        """(unit, reference) scores paired by seed, finite ones only; on the first seeds alone or on all."""
        ref = reference.by_seed()
        return [(s, ref[seed]) for seed, s in unit.by_seed().items()
                if seed in ref and (seed in self.first or not first_only)
                and math.isfinite(s) and math.isfinite(ref[seed])]

    def judge(self, named: dict[str, Unit], reference: Unit,
              margin: float) -> tuple[dict[str, Judgement], dict[str, list[tuple[float, float]]]]:
        """(judgements, the pairs each is based on) of one question's variants."""
        basis = {k: p for k, u in named.items() if (p := self.pairs(u, reference, True))}
        judged = judge({k: _effect(p, self.resolution) for k, p in basis.items()}, self.maximize, margin, self.alpha)
        again = {k: self.pairs(u, reference, False) for k, u in named.items()
                 if k in judged and judged[k].kind == "inconclusive" and any(u is x for x in self.extended)}
        if again:
            judged.update(judge({k: _effect(p, self.resolution) for k, p in again.items()}, self.maximize, margin,
                                self.alpha))
            basis.update(again)
        return judged, basis

    def inconclusive(self, valid: dict[str, list[Variant]], units: dict[str, Unit], reference: Unit) -> list[Unit]:
        """The units with a comparison still inconclusive on the first seeds, in any question."""
        margin = self.margin(reference)
        out: list[Unit] = []
        if margin is None:
            return out
        for variants in valid.values():
            named = {v.name: units[v.key()] for v in variants if units[v.key()].scores is not None}
            judged, _ = self.judge(named, reference, margin)
            out += [named[k] for k, j in judged.items() if j.kind == "inconclusive" and named[k] not in out]
        return out

    def margin(self, reference: Unit) -> float | None:
        """The question's equivalence margin (None before the reference has a finite score)."""
        finite = [s for s in reference.scores or [] if math.isfinite(s)]
        return equivalence_margin(self.points, self.resolution, statistics.fmean(finite)) if finite else None


def _plan(base: RunConfig, made: dict, questions: Sequence[str],
          context: RunContext) -> tuple[Unit, dict[str, Unit], dict[str, list[Variant]], dict[str, list[dict]]]:
    """The reference unit, one unit per distinct variant configuration (keyed by it), and per question its
    buildable variants and the skipped ones with the reason."""
    reference, ref_params = Unit(base, weight=1.0), _params(base, context)
    units: dict[str, Unit] = {}
    valid: dict[str, list[Variant]] = {}
    skipped: dict[str, list[dict]] = {}
    for q in questions:
        if not isinstance(made.get(q), list):
            continue
        valid[q], skipped[q] = ablations.build(base, made[q])
        for v in list(valid[q]):
            try:
                weight = math.sqrt(min(16.0, max(0.25, _params(v.config, context) / ref_params)))
            except Exception as err:  # e.g. one more conv block than the input size allows
                valid[q].remove(v)
                skipped[q].append({"name": v.name, "reason": f"cannot build: {str(err).splitlines()[0]}"})
                continue
            units.setdefault(v.key(), Unit(v.config, weight=weight)).variants.append(v)
    return reference, units, valid, skipped


def _params(cfg: RunConfig, context: RunContext) -> int:
    ds = context.base_data.dataset
    return sum(p.numel() for p in build_model(cfg.model, ds.input_shape, ds.n_outputs).parameters())


def _range_test(cfg: RunConfig, context: RunContext) -> float | None:
    """The LR range test's suggestion for the chosen model (None when the test fails on this model)."""
    data = context.data_for(cfg)
    model = build_model(cfg.model, data.dataset.input_shape, data.dataset.n_outputs, seed=cfg.seed)
    try:
        return range_test(cfg, data, model).suggestion
    except Exception:  # a failed range test only loses that one variant; the answer says it did not run
        return None


def _effect(pairs: list[tuple[float, float]], resolution: float) -> Effect:
    return paired_effect([s for s, _ in pairs], [r for _, r in pairs], resolution=resolution)


def _answer(question: str, base: RunConfig, context: RunContext, made: dict, valid: dict[str, list[Variant]],
            skipped: dict[str, list[dict]], units: dict[str, Unit], reference: Unit, stages: Stages) -> dict:
    """One question's entry: each variant's mean score, paired difference to the chosen configuration and verdict."""
    chosen = ablations.chosen_names(base, context.base_data.dataset.kind)[question]
    if isinstance(made.get(question), str):
        return {"verdict": made[question], "chosen": chosen, "variants": [], "skipped": []}
    missed, dead, named = list(skipped.get(question, [])), [], {}
    for v in valid.get(question, []):
        unit = units[v.key()]
        if unit.scores is None:
            missed.append({"name": v.name, "reason": unit.skipped or "not run"})
            continue
        named[v.name] = unit
    finite = [s for s in reference.scores or [] if math.isfinite(s)]
    margin = stages.margin(reference)
    judged, basis = stages.judge(named, reference, margin) if margin is not None else ({}, {})
    rows = []
    for name, unit in named.items():
        pairs, diverged = basis.get(name, []), sum(1 for c in unit.curves if replay_diverged(c))
        if diverged:
            dead.append(f"{name} ({diverged} of {len(unit.curves)})")
        row = {"name": name, "mean": None, "diff": None, "ci_low": None, "ci_high": None, "n": len(pairs),
               "seconds": round(unit.seconds, 2), "diverged": diverged}
        if pairs:
            effect = judged[name].effect
            row.update(mean=statistics.fmean(s for s, _ in pairs), diff=effect.mean, ci_low=effect.ci_low,
                       ci_high=effect.ci_high, **judged[name].to_dict())
        rows.append(row)
    if reference.scores is None:
        text = ("Not measured: the time budget ended before the chosen configuration's own runs finished; give "
                "--evidence-budget more time.")
    elif not judged:
        reasons = sorted({m["reason"] for m in missed} | ({"no finite score on any seed"} if rows else set()))
        more = "; give --evidence-budget more time" if any(r.startswith("time budget") for r in reasons) else ""
        text = f"Not measured: no variant has a score to compare ({'; '.join(reasons) or 'none to run'}){more}."
    else:
        text = verdict(chosen, judged, stages.points, context.monitor, margin)
        if dead:
            text += f" Diverged (non-finite loss) on some seeds: {', '.join(dead)}."
        budget = sum(1 for m in missed if m["reason"].startswith("time budget"))
        if budget:
            text += f" {budget} variant(s) skipped for the time budget."
    return {"verdict": text, "chosen": chosen, "chosen_mean": statistics.fmean(finite) if finite else None,
            "chosen_seconds": round(reference.seconds, 2), "margin": margin, "variants": rows, "skipped": missed}


def _trainable(base: RunConfig, context: RunContext) -> dict:
    """Question 1: the parameter summary; a model trained from scratch freezes nothing, so there is no experiment."""
    ds = context.base_data.dataset
    s = summary(build_model(base.model, ds.input_shape, ds.n_outputs), ds.input_shape)
    stats = f" ({s.non_trainable:,} non-trainable: batch-norm running statistics, which get no gradients)" \
        if s.non_trainable else ""
    text = (f"No experiment: this model is trained from scratch and no layer is frozen, so all {s.trainable:,} "
            f"weights train{stats}. Freezing is a choice when a trained model is reused.")
    return {"verdict": text, "chosen": f"{s.trainable:,} trainable, {s.non_trainable:,} non-trainable",
            "kind": "parameter summary", "variants": [], "skipped": []}


def explain(run_dir: str | Path, seeds: int | None = None, budget: float | None = None,
            questions: Sequence[str] | None = None, progress: bool = False, dataset: Dataset | None = None,
            max_seeds: int | None = None) -> dict:
    """Run the evidence for a finished ``tune`` or ``train`` run directory, store it in its result.json (key
    ``evidence``) and return it. ``seeds``, ``max_seeds``, ``budget`` and ``questions`` default to the run config's
    ``evidence``;
    ``dataset`` is the in-memory data the run was given (else the config's source is loaded)."""
    check_questions(questions)  # before any loading, so a typo fails at once
    run_dir = Path(run_dir)
    path = run_dir / "result.json"
    result = read_result(run_dir)
    if "study" in result:
        run_cfg = load_config(run_dir / "config.yaml")
        chosen = build_config(result.get("chosen_config") or _trial_config(result), where=str(path))
        suggestion = None  # the search's range test ran on the base config: test the chosen model itself
    else:
        run_cfg = chosen = build_config(result["config"], where=str(path))
        suggestion = (result.get("lr_find") or {}).get("suggestion")  # this very model's range test
    given = {"evidence.seeds": seeds, "evidence.max_seeds": max_seeds, "evidence.budget": budget,
             "evidence.questions": questions}
    run_cfg = apply_overrides(run_cfg, {k: v for k, v in given.items() if v is not None})
    ev = run_cfg.evidence
    data = prepare_data(run_cfg, dataset)
    recorded = rundir.owner(run_dir)  # the data may have changed on disk since the run: its answers would not hold
    rundir.same_data(recorded and recorded.get("data"), rundir.fingerprint(data.dataset, data_source(run_cfg, dataset)),
                     f"run {run_dir}", "explain a run on the data it was trained on")
    context = RunContext(run_cfg, data)
    evidence = run_evidence(chosen, context, ev.seeds, ev.budget, ev.questions, suggestion, progress,
                            max_seeds=max(ev.max_seeds, ev.seeds), resplit=ev.resplit)
    result["evidence"] = evidence
    write_result(run_dir, result)
    return evidence


def _trial_config(result: dict) -> dict:
    """The chosen trial's configuration from the study (run directories written before ``chosen_config``)."""
    study = load_recorded_study(result["study"])
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == result["best_trial"]), None)
    if trial is None:
        raise ArtifactError(f"the chosen trial {result['best_trial']} is not in {result['study']['storage']}")
    return trial.user_attrs["config"]
