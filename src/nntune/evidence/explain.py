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
from nntune.config import (EVIDENCE_QUESTIONS, EarlyStoppingConfig, RunConfig, apply_overrides, build_config,
                           check_questions, load_config)
from nntune.data.sources import Dataset
from nntune.errors import ArtifactError, ConfigError
from nntune.evidence import ablations
from nntune.evidence.ablations import Variant
from nntune.evidence.replay import diverged as replay_diverged
from nntune.evidence.replay import early_stopping_evidence, score
from nntune.evidence.stats import METHOD, RULE, equivalence_margin, judge, paired_effect, verdict
from nntune.models.builders import build_model
from nntune.models.inspect import summary
from nntune.storage import load_recorded_study
from nntune.training.callbacks import TimeLimit
from nntune.training.context import RunContext
from nntune.training.pipeline import data_source, fit_configs, prepare_data, range_test
from nntune.training.population.structure import structure_key

SEED_STRIDE = 104_729  # evidence seeds are chosen.seed + k * stride: fresh, none used by the search or finalists


@dataclass(eq=False)
class Unit:
    """One distinct configuration to run over the seeds (a variant, several identical variants, or the reference)."""

    config: RunConfig
    variants: list[Variant] = field(default_factory=list)
    weight: float = 1.0  # relative cost of one population of it (parameter count against the reference)
    scores: list[float] | None = None
    curves: list[list[dict]] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str | None = None


class CostModel:
    """Seconds a set of units will take, from the units that ran alone so far (the reference always does): their
    measured seconds per unit of weight (a model with 4× the parameters counts 2×: small models are dominated by
    fixed per-step costs), times the weights. A group is estimated as the sum of its units run alone, an upper bound
    where populations pay (a GPU), so the plan errs on the careful side."""

    def __init__(self) -> None:
        self.observed: list[float] = []

    def estimate(self, units: Sequence[Unit]) -> float:
        if not self.observed:
            return 0.0
        return statistics.fmean(self.observed) * sum(u.weight for u in units)

    def record(self, units: Sequence[Unit], seconds: float) -> None:
        if len(units) == 1:
            self.observed.append(seconds / units[0].weight)


def run_evidence(chosen: RunConfig, context: RunContext, seeds: int = 3, budget: float = 600.0,
                 questions: Sequence[str] | None = None, lr_suggestion: float | None = None,
                 progress: bool = False, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Answer the questions with controlled variants of ``chosen`` on ``context``'s data split (the run's base split,
    scaled per variant); returns the ``evidence`` object of result.json: one entry per question plus ``setup``.
    ``budget`` is in seconds of ``clock`` (the tests pass a clock that ticks per call, to plan deterministically)."""
    started = clock()
    deadline = started + budget
    questions = check_questions(questions)
    if seeds < 2:
        raise ConfigError(f"evidence.seeds: at least 2 seeds are needed for a confidence interval, got {seeds}")
    if not budget > 0:
        raise ConfigError(f"evidence.budget: must be a positive number of seconds, got {budget}")
    ds = context.base_data.dataset
    maximize = points = ds.task == "classification"
    resolution = 1 / len(context.base_data.split.val) if points else 0.0  # accuracy moves in steps of one sample
    base = apply_overrides(chosen, {"train.early_stopping.enabled": False, "train.lr_auto": False})
    seed_list = [chosen.seed + SEED_STRIDE * (i + 1) for i in range(seeds)]
    if "lr" in questions and lr_suggestion is None:
        lr_suggestion = _range_test(base, context)
    made = ablations.variants(base, ds.kind, lr_suggestion)
    reference, units, valid, skipped = _plan(base, made, questions, context)
    ranked = ablations.order(valid, EVIDENCE_QUESTIONS)
    plan = [reference] + list({id(u): u for u in (units[v.key()] for v in ranked)}.values())
    tuned = base.finetune.init_from is not None  # then question 1 has experiments (freezing variants)
    needs_runs = tuned or any(q != "trainable" for q in questions)
    runs, interrupted = _execute(plan if needs_runs else [], context, seed_list, chosen.train.early_stopping,
                                 deadline, progress, clock)
    result = {}
    for q in (q for q in EVIDENCE_QUESTIONS if q in questions):
        if q == "trainable" and not tuned:
            result[q] = _trainable(base, context)
        elif q == "early_stopping":
            curves = [c for u in plan if u.scores is not None for c in u.curves]
            result[q] = early_stopping_evidence(curves, chosen.train.early_stopping, context.monitor, maximize,
                                                points, resolution)
        else:
            result[q] = _answer(q, base, context, made, valid, skipped, units, reference, maximize, points,
                                resolution)
    n_skipped = sum(1 for u in units.values() if u.skipped)
    result["setup"] = {
        "seeds": seed_list, "method": f"{METHOD}; intervals 95 %, paired by seed", "rule": RULE,
        "metric": context.monitor,
        "maximize": maximize, "points": points, "budget": budget, "seconds": round(clock() - started, 2),
        "runs": runs, "variants": len(units), "skipped": n_skipped, "interrupted": interrupted,
        "resolution": resolution, "lr_suggestion": lr_suggestion, "chosen_config": base.to_dict(),
        "score": f"{context.monitor} at the epoch the chosen early-stopping policy keeps, on the validation split",
    }
    return result


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


def _execute(units: list[Unit], context: RunContext, seeds: list[int], policy: EarlyStoppingConfig, deadline: float,
             progress: bool, clock: Callable[[], float]) -> tuple[int, bool]:
    """Run the units in order (the reference first), each with the seeds, grouping later units of the same
    structure into its population while there is room and the estimated cost fits the time left. Scores are the
    chosen early-stopping ``policy`` replayed on each run's curve. Returns (runs finished, interrupted)."""
    cost = CostModel()
    runs, reference, queue = 0, units[0] if units else None, list(units)
    bar = _Bar(len(units) * len(seeds)) if progress else None
    try:
        while queue:
            unit = queue.pop(0)
            left = deadline - clock()
            if unit is not reference and cost.estimate([unit]) > left:
                unit.skipped = "time budget"
                if bar:
                    bar.advance(len(seeds))
                continue
            group = _group(unit, queue, cost, left, context.population_size(unit.config), len(seeds))
            if bar:
                bar.describe(group)
            cfgs = [apply_overrides(u.config, {"seed": s}) for u in group for s in seeds]
            limit = TimeLimit(lambda: deadline - clock(), "evidence budget")
            t0 = clock()
            fits = fit_configs(cfgs, context.data_for, context.population_size(unit.config), [[limit] for _ in cfgs],
                               val_halves=True)
            seconds = clock() - t0
            cost.record(group, seconds)
            for i, u in enumerate(group):
                mine = [fit for _, fit in fits[i * len(seeds):(i + 1) * len(seeds)]]
                u.seconds = seconds * len(seeds) / len(cfgs)
                if any(f.stop_reason.startswith("evidence budget") for f in mine):
                    u.skipped = "time budget (cut during its runs)"
                    continue
                u.curves = [[{k: v for k, v in h.items() if k != "grad_norms"} for h in f.history] for f in mine]
                u.scores = [score(c, policy, context.monitor) for c in u.curves]
                runs += len(mine)
            if bar:
                bar.advance(len(cfgs))
    except KeyboardInterrupt:
        for u in units:
            if u.scores is None and u.skipped is None:
                u.skipped = "interrupted"
        return runs, True
    finally:
        if bar:
            bar.stop()
    return runs, False


def _group(unit: Unit, queue: list[Unit], cost: CostModel, left: float, size: int, seeds: int) -> list[Unit]:
    """``unit`` and the later units of its structure that fill its population, taken out of ``queue``. A later
    unit joins only while the group's estimated cost plus that of every unit ahead of it in the queue fits the time
    left, so pulling a unit forward never takes time from a more informative one. Before anything was measured,
    the unit runs alone."""
    group = [unit]
    if not cost.observed:
        return group
    key, need, ahead = structure_key(unit.config), cost.estimate([unit]), 0.0
    for other in list(queue):
        if (len(group) + 1) * seeds > size:
            break
        extra = cost.estimate([other])
        if structure_key(other.config) == key and need + extra + ahead <= left:
            group.append(other)
            queue.remove(other)
            need += extra
        else:
            ahead += extra
    return group


class _Bar:
    """A rich progress bar over the planned runs, showing the variants in training."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("[bold]evidence"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                                 console=Console(stderr=True))
        self.progress.start()
        self.task = self.progress.add_task("evidence", total=total, status="")

    def describe(self, group: Sequence[Unit]) -> None:
        names = [f"{v.question}: {v.name}" for u in group for v in u.variants[:1]] or ["the chosen configuration"]
        shown = ", ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "")
        self.progress.update(self.task, status=shown)

    def advance(self, runs: int) -> None:
        self.progress.advance(self.task, runs)

    def stop(self) -> None:
        self.progress.stop()


def _answer(question: str, base: RunConfig, context: RunContext, made: dict, valid: dict[str, list[Variant]],
            skipped: dict[str, list[dict]], units: dict[str, Unit], reference: Unit, maximize: bool,
            points: bool, resolution: float) -> dict:
    """One question's entry: each variant's mean score and paired difference to the chosen configuration."""
    chosen = ablations.chosen_names(base, context.base_data.dataset.kind)[question]
    if isinstance(made.get(question), str):
        return {"verdict": made[question], "chosen": chosen, "variants": [], "skipped": []}
    rows, effects, missed, dead = [], {}, list(skipped.get(question, [])), []
    for v in valid.get(question, []):
        unit = units[v.key()]
        if unit.scores is None:
            missed.append({"name": v.name, "reason": unit.skipped or "not run"})
            continue
        pairs = [(s, r) for s, r in zip(unit.scores, reference.scores or []) if math.isfinite(s) and math.isfinite(r)]
        diverged = sum(1 for c in unit.curves if replay_diverged(c))
        if diverged:
            dead.append(f"{v.name} ({diverged} of {len(unit.curves)})")
        row = {"name": v.name, "mean": None, "diff": None, "ci_low": None, "ci_high": None, "n": len(pairs),
               "seconds": round(unit.seconds, 2), "diverged": diverged}
        if pairs:
            effect = paired_effect([s for s, _ in pairs], [r for _, r in pairs], resolution=resolution)
            effects[v.name] = effect
            row.update(mean=statistics.fmean(s for s, _ in pairs), diff=effect.mean, ci_low=effect.ci_low,
                       ci_high=effect.ci_high)
        rows.append(row)
    finite = [s for s in reference.scores or [] if math.isfinite(s)]
    margin = equivalence_margin(points, resolution, statistics.fmean(finite)) if finite else None
    if reference.scores is None:
        text = ("Not measured: the time budget ended before the chosen configuration's own runs finished; give "
                "--evidence-budget more time.")
    elif not effects:
        reasons = sorted({m["reason"] for m in missed} | ({"no finite score on any seed"} if rows else set()))
        more = "; give --evidence-budget more time" if any(r.startswith("time budget") for r in reasons) else ""
        text = f"Not measured: no variant has a score to compare ({'; '.join(reasons) or 'none to run'}){more}."
    else:
        judgements = judge(effects, maximize, margin)
        for row in rows:
            if row["name"] in judgements:
                row.update(judgements[row["name"]].to_dict())
        text = verdict(chosen, judgements, points, context.monitor, margin)
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
            questions: Sequence[str] | None = None, progress: bool = False, dataset: Dataset | None = None) -> dict:
    """Run the evidence for a finished ``tune`` or ``train`` run directory, store it in its result.json (key
    ``evidence``) and return it. ``seeds``, ``budget`` and ``questions`` default to the run config's ``evidence``;
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
    given = {"evidence.seeds": seeds, "evidence.budget": budget, "evidence.questions": questions}
    run_cfg = apply_overrides(run_cfg, {k: v for k, v in given.items() if v is not None})
    ev = run_cfg.evidence
    data = prepare_data(run_cfg, dataset)
    recorded = rundir.owner(run_dir)  # the data may have changed on disk since the run: its answers would not hold
    rundir.same_data(recorded and recorded.get("data"), rundir.fingerprint(data.dataset, data_source(run_cfg, dataset)),
                     f"run {run_dir}", "explain a run on the data it was trained on")
    context = RunContext(run_cfg, data)
    evidence = run_evidence(chosen, context, ev.seeds, ev.budget, ev.questions, suggestion, progress)
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
