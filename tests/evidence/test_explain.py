"""Planted effects: data built so that one alternative must win, with the interval on the right side of zero."""

import random

import pytest
import torch

from nntune.config import EVIDENCE_QUESTIONS, RunConfig, apply_overrides
from nntune.data.sources import Dataset
from nntune.errors import ConfigError
from nntune.evidence.explain import Stages, run_evidence
from nntune.evidence.runner import Runner, Unit
from nntune.evidence.replay import score
from nntune.evidence.stats import equivalence_margin, judge, paired_effect, verdict
from nntune.training.context import RunContext
from nntune.training.pipeline import fit_configs, prepare_data

TINY = {"train.epochs": 12, "model.units": 32, "model.hidden_layers": 1, "train.batch_size": 32}


def blobs(n=400, features=8, classes=4, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=g) * 1.5
    y = torch.randint(0, classes, (n,), generator=g)
    return Dataset("blobs", centers[y] + torch.randn(n, features, generator=g), y, "classification",
                   [str(i) for i in range(classes)])


def searching(cfg: RunConfig, ds: Dataset) -> RunContext:
    data = prepare_data(cfg, ds)
    search = RunContext(cfg, data)
    return search


def variant(entry: dict, name: str) -> dict:
    return next(r for r in entry["variants"] if r["name"] == name)


def test_wildly_different_feature_scales_need_normalization():
    # the class shows in four features a thousandth in scale; four features of pure noise are a thousand times larger
    ds = blobs(n=600, features=4)
    noise = torch.randn(len(ds), 4, generator=torch.Generator().manual_seed(1))
    ds.x = torch.cat([ds.x * 2e-3, noise * 1e3], dim=1)
    cfg = apply_overrides(RunConfig(), {**TINY, "preprocess.scaler": "zscore", "train.lr": 0.01})
    ev = run_evidence(cfg, searching(cfg, ds), seeds=3, budget=120, questions=["normalization"])
    entry = ev["normalization"]
    none = variant(entry, "none")
    assert none["n"] == 3 and none["ci_high"] < -0.3  # zscore beats none: none - zscore is far below 0
    assert entry["chosen"] == "zscore" and "none" in entry["verdict"]
    assert set(ev) == {"normalization", "setup"}


def test_augmentation_that_destroys_the_label_is_left_out():
    # the label says which half of the image is brighter: a horizontal flip turns it into the other class
    g = torch.Generator().manual_seed(0)
    n = 400
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.5
    bright = torch.where(y.bool().view(-1, 1, 1), torch.arange(8) >= 4, torch.arange(8) < 4)
    x = x + 0.5 * bright.view(n, 1, 1, 8).float()
    ds = Dataset("halves", x, y, "classification", ["left", "right"])
    cfg = apply_overrides(RunConfig(), {**TINY, "preprocess.augment": "custom", "preprocess.augment_strength": 1.0,
                                        "preprocess.augment_ops": [{"op": "hflip"}, {"op": "noise", "std": 0.02}]})
    ev = run_evidence(cfg, searching(cfg, ds), seeds=3, budget=120, questions=["augmentation"])
    entry = ev["augmentation"]
    assert [r["name"] for r in entry["variants"]] == ["none", "without hflip", "without noise"]
    assert variant(entry, "without hflip")["ci_low"] > 0
    assert variant(entry, "without hflip")["mean"] > variant(entry, "without noise")["mean"] + 0.2
    assert entry["verdict"].startswith(("without hflip beats", "none beats"))


def test_a_too_high_learning_rate_is_caught():
    cfg = apply_overrides(RunConfig(), {**TINY, "train.optimizer": "sgd", "train.lr": 4.0,
                                        "preprocess.scaler": "zscore"})
    ev = run_evidence(cfg, searching(cfg, blobs()), seeds=3, budget=120, questions=["lr"], lr_suggestion=0.05)
    entry = ev["lr"]
    third = variant(entry, "lr ×⅓ (1.33)")
    assert third["ci_low"] > 0 and third["n"] == 3
    assert [r["name"] for r in entry["variants"]] == ["lr ×⅓ (1.33)", "lr ×3 (10)", "range test (0.05)"]
    assert "beats the chosen lr 4" in entry["verdict"]


def test_two_identical_configurations_show_no_difference():
    """The same configuration under two independent sets of seeds: pure seed noise, so the interval contains 0."""
    cfg = apply_overrides(RunConfig(), {**TINY, "train.early_stopping.enabled": False})
    search = searching(cfg, blobs(seed=1))
    runs = fit_configs([apply_overrides(cfg, {"seed": s}) for s in (11, 12, 13, 21, 22, 23)], search.data_for, 2)
    scores = [score(fit.history, RunConfig().train.early_stopping, "val_accuracy") for _, fit in runs]
    effect = paired_effect(scores[3:], scores[:3], resolution=1 / len(search.base_data.split.val))
    assert effect.ci_low <= 0 <= effect.ci_high
    judged = judge({"B": effect}, maximize=True, margin=equivalence_margin(True, 1 / len(search.base_data.split.val),
                                                                          0.9))
    assert judged["B"].kind in ("equivalent", "inconclusive")
    text = verdict("A", judged, points=True)
    assert not text.startswith("B beats") and "worse" not in text and "No measurable difference" not in text


class Ticks:
    """A clock that advances one unit per reading: the evidence reads it once per member per epoch (and a few times
    per population), so a budget in ticks plans the same way on any machine."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


def test_all_questions_within_the_budget():
    cfg = apply_overrides(RunConfig(), {**TINY, "train.epochs": 20, "search.population": 4})
    # the chosen configuration's two runs read the clock some 45 times; the 36 variants' runs some 1,500 times
    budget = 300
    ev = run_evidence(cfg, searching(cfg, blobs(n=200)), seeds=2, budget=budget, lr_suggestion=0.01, clock=Ticks())
    assert list(ev) == [*EVIDENCE_QUESTIONS, "setup"]
    setup = ev["setup"]
    # spent; a run in flight stops after its epoch; deciding to skip a variant reads the clock once more
    assert budget - 50 <= setup["seconds"] <= budget + setup["skipped"] + 5
    assert setup["runs"] >= 2  # the chosen configuration always runs first
    for q in EVIDENCE_QUESTIONS:
        entry = ev[q]
        assert entry["verdict"] and "chosen" in entry and isinstance(entry["variants"], list)
        for r in entry["variants"]:
            assert {"name", "mean", "ci_low", "ci_high", "n", "seconds"} <= set(r)
            assert r["n"] == 2 or q == "early_stopping"
    assert ev["trainable"]["variants"] == [] and ev["trainable"]["verdict"].startswith("No experiment")
    assert ev["augmentation"]["verdict"].startswith("Not applicable")
    ran = sum(len(ev[q]["variants"]) for q in EVIDENCE_QUESTIONS if q != "early_stopping")
    skipped = sum(len(ev[q]["skipped"]) for q in EVIDENCE_QUESTIONS)
    assert skipped > 0 and ran + skipped >= 30  # a budget this small cannot run everything; the rest is listed
    assert all(s["reason"].startswith("time budget") for q in EVIDENCE_QUESTIONS for s in ev[q]["skipped"])
    # most informative first: the first variant of every question ran, no second one did
    assert [len(ev[q]["variants"]) for q in ("dropout", "depth", "width", "lr", "activation", "normalization")] \
        == [1] * 6


def test_unknown_question_is_a_one_line_error():
    cfg = apply_overrides(RunConfig(), TINY)
    search = searching(cfg, blobs(n=100))
    with pytest.raises(ConfigError, match="evidence.questions: unknown question 'dropouts'"):
        run_evidence(cfg, search, questions=["dropouts"])
    with pytest.raises(ConfigError, match="evidence.seeds: at least 2 seeds"):
        run_evidence(cfg, search, seeds=1)
    with pytest.raises(ConfigError, match="evidence.budget: must be a positive"):
        run_evidence(cfg, search, budget=0)


def test_variants_pair_with_the_reference_seed_by_seed_inside_one_population():
    """A variant that cannot change anything (early-stopping patience, with early stopping off for evidence runs),
    trained second in a population after another variant, must match the reference run alone, seed by seed: any
    mix-up of seeds or of the population's members between units would show."""
    cfg = apply_overrides(RunConfig(), {**TINY, "search.population": 8, "train.early_stopping.enabled": False})
    search = searching(cfg, blobs(n=200))
    reference = Unit(cfg)
    other = Unit(apply_overrides(cfg, {"train.lr": 0.03}))
    twin = Unit(apply_overrides(cfg, {"train.early_stopping.patience": 2}))
    runner = Runner(search, RunConfig().train.early_stopping, 10**9, False, Ticks())
    runner.first_seeds([reference, other, twin], [5, 6, 7])
    assert runner.runs == 9 and reference.seeds == other.seeds == twin.seeds == [5, 6, 7]
    assert other.seconds == twin.seconds  # one population: the measured time is shared
    for a, b in zip(twin.curves, reference.curves):  # the same runs, up to float32 summation order
        assert max(abs(x["val_loss"] - y["val_loss"]) for x, y in zip(a, b)) < 1e-4
    assert len(set(reference.scores)) > 1 and other.scores != reference.scores  # seeds and LRs do differ
    assert [len(c) for c in twin.curves] == [12, 12, 12]


def test_adaptive_seeds_extend_the_inconclusive_comparisons():
    """Two first seeds, then further seeds for the variants still inconclusive, up to max_seeds; a comparison
    decided on the first seeds keeps them (and its verdict)."""
    cfg = apply_overrides(RunConfig(), {**TINY, "train.epochs": 6, "train.optimizer": "sgd", "train.lr": 0.05,
                                        "search.population": 8})
    ev = run_evidence(cfg, searching(cfg, blobs(n=200)), seeds=2, budget=10**6, questions=["lr", "early_stopping"],
                      lr_suggestion=0.02, clock=Ticks(), max_seeds=4)
    setup, rows = ev["setup"], ev["lr"]["variants"]
    assert setup["adaptive"]["max_seeds"] == 4 and setup["adaptive"]["alpha_per_stage"] == 0.025
    assert len(setup["adaptive"]["extra_seeds"]) == 2 and setup["seeds"] == setup["seeds"][:2]
    assert setup["adaptive"]["extended"] == sum(r["n"] == 4 for r in rows) >= 1
    assert all(r["n"] in (2, 4) and r["verdict"] for r in rows)
    curves = 4 + sum(r["n"] for r in rows)  # the reference's 4 seeds and each variant's: every curve counts
    assert ev["early_stopping"]["variants"][0]["n"] == curves


def _unit(seeds, scores):
    return Unit(RunConfig(), seeds=list(seeds), scores=list(scores))


def test_two_stage_seeds_keep_the_error_rate_on_null_data():
    """The adaptive rule on null data (every score a draw from one binomial, 100 validation samples): all comparisons
    still inconclusive after 3 seeds get the same further seeds, whatever their interim effects, and both stages
    test at half the error rate: the family-wise rate of a better/worse verdict stays at 5 %."""
    rng = random.Random(0)

    def acc():
        return sum(rng.random() < 0.5 for _ in range(100)) / 100

    hits = 0
    for _ in range(300):
        seeds = list(range(10))
        reference = _unit(seeds, [acc() for _ in seeds])
        units = {f"v{i}": _unit(seeds, [acc() for _ in seeds]) for i in range(4)}
        first = {k: _unit(seeds[:3], u.scores[:3]) for k, u in units.items()}
        stages = Stages(set(seeds[:3]), 0.025, maximize=True, points=True, resolution=0.01)
        margin = stages.margin(reference)
        open_ = [k for k, j in stages.judge(first, reference, margin)[0].items() if j.kind == "inconclusive"]
        stages.extended = [units[k] for k in open_]
        named = {k: (units[k] if k in open_ else first[k]) for k in units}
        judged, _ = stages.judge(named, reference, margin)
        hits += any(j.kind in ("better", "worse") for j in judged.values())
    assert hits / 300 <= 0.07


def test_each_seed_trains_on_its_own_split_with_the_test_split_kept():
    """Split variation: seed i of every configuration trains on the i-th redrawn train/validation split; the planted
    normalization effect still shows, and identical configurations on one seed see the same split."""
    ds = blobs(n=600, features=4)
    noise = torch.randn(len(ds), 4, generator=torch.Generator().manual_seed(1))
    ds.x = torch.cat([ds.x * 2e-3, noise * 1e3], dim=1)
    cfg = apply_overrides(RunConfig(), {**TINY, "preprocess.scaler": "zscore", "train.lr": 0.01})
    context = searching(cfg, ds)
    ev = run_evidence(cfg, context, seeds=3, budget=120, questions=["normalization"], resplit=True)
    assert ev["setup"]["resplit"] and variant(ev["normalization"], "none")["ci_high"] < -0.3
    splits = {seed: data.split for (_, seed), data in context.redrawn.items()}  # the latest few are kept
    assert set(splits) <= set(ev["setup"]["seeds"]) and len(splits) >= 2
    vals = [s.val for s in splits.values()]
    assert all(torch.equal(s.test, context.base_data.split.test) for s in splits.values())
    assert not torch.equal(vals[0], vals[1]) and not torch.equal(vals[0], context.base_data.split.val)


def test_two_scalers_that_give_identical_inputs_are_equivalent():
    """Binary features: min-max scaling leaves them as they are, so 'none' trains on identical inputs, with the
    same seeds: every difference is exactly 0, and the verdict is equivalent (never 'no measurable difference')."""
    g = torch.Generator().manual_seed(3)  # 1500 samples: a 225-sample validation split, so 3 seeds can show it
    x = (torch.rand(1500, 8, generator=g) > 0.5).float()
    y = (x[:, 0] + x[:, 1] + 0.3 * torch.randn(1500, generator=g) > 1).long()
    ds = Dataset("bits", x, y, "classification", ["0", "1"])
    cfg = apply_overrides(RunConfig(), {**TINY, "preprocess.scaler": "minmax"})
    ev = run_evidence(cfg, searching(cfg, ds), seeds=3, budget=120, questions=["normalization"])
    none = variant(ev["normalization"], "none")
    assert none["diff"] == 0 and none["verdict"] == "equivalent"
    assert "none equivalent (within ±1.0 points)" in ev["normalization"]["verdict"]


def test_random_labels_give_at_most_one_effect_in_a_whole_run():
    """Labels independent of the inputs: nothing can matter, so a run over every question reports at most one
    better/worse verdict (Holm within each question; ~0.3 expected per run)."""
    ds = blobs(n=240, seed=5)
    ds.y = torch.randint(0, 4, (len(ds),), generator=torch.Generator().manual_seed(6))
    cfg = apply_overrides(RunConfig(), {**TINY, "train.epochs": 6, "search.population": 8})
    ev = run_evidence(cfg, searching(cfg, ds), seeds=3, budget=10**6, lr_suggestion=0.003, clock=Ticks())
    decided = [(q, r["name"]) for q in EVIDENCE_QUESTIONS if q != "early_stopping"
               for r in ev[q]["variants"] if r.get("verdict") in ("better", "worse")]
    compared = sum(1 for q in EVIDENCE_QUESTIONS if q != "early_stopping" for r in ev[q]["variants"] if r["n"])
    assert compared >= 30 and len(decided) <= 1, decided
