import pytest
import torch

from nntune.config import EarlyStoppingConfig, RunConfig, apply_overrides
from nntune.data.sources import Dataset
from nntune.evidence.replay import Outcome, diverged, early_stopping_evidence, policies, policy_name, replay, score
from nntune.training.pipeline import fit_configs, fit_model, prepare_data


def curve(losses, accs=None):
    accs = accs or [0.5 + 0.01 * i for i in range(len(losses))]
    return [{"epoch": i + 1, "val_loss": v, "val_accuracy": a} for i, (v, a) in enumerate(zip(losses, accs))]


def test_replay_by_hand():
    c = curve([1.0, 0.8, 0.7, 0.75, 0.72, 0.71, 0.9, 0.95])
    es = EarlyStoppingConfig(patience=3)
    assert replay(c, es) == Outcome(epochs=6, kept_epoch=3)  # no better than 0.7 for epochs 4, 5, 6
    assert replay(c, es.model_copy(update={"patience": 5})) == Outcome(8, 3)  # ran out of curve: best restored
    assert replay(c, es.model_copy(update={"enabled": False})) == Outcome(8, 8)  # off keeps the last weights
    assert replay(c, es.model_copy(update={"restore_best_weights": False})) == Outcome(6, 6)
    # min_delta 0.15: 0.8 improves on 1.0 by more than that, 0.7 and 0.75 do not improve on 0.8 by enough
    assert replay(c, es.model_copy(update={"min_delta": 0.15, "patience": 2})) == Outcome(4, 2)
    assert score(c, es, "val_accuracy") == pytest.approx(0.52)
    assert replay([], es) == Outcome(0, 0)


def test_a_diverged_row_ends_the_curve_unseen_by_early_stopping():
    c = curve([1.0, 0.8, 0.9, float("nan"), 0.5])
    assert diverged(c) and not diverged(c[:3])
    es = EarlyStoppingConfig(patience=5)
    assert replay(c, es) == Outcome(4, 2)  # stopped at the NaN, best weights before it restored
    assert replay(c, es.model_copy(update={"enabled": False})) == Outcome(4, 4)  # no restore: the diverged weights
    assert replay(curve([float("nan"), 0.5]), es) == Outcome(1, 1)  # nothing seen before it: the last weights
    good = [curve([1.0, 0.9, 0.8, 0.7]) for _ in range(3)]
    entry = early_stopping_evidence(good + [c], es, "val_accuracy", maximize=True, points=True)
    assert entry["variants"][0]["n"] == 3 and entry["full_epochs"] == 4  # the diverged run is not a full curve


def test_policies_drop_the_chosen_one():
    names = [policy_name(p) for p in policies(EarlyStoppingConfig(patience=10))]
    assert names == ["off", "patience 3", "patience 5", "patience 20", "patience 10, min_delta 0.001",
                     "patience 10, min_delta 0.01"]
    assert "off" not in [policy_name(p) for p in policies(EarlyStoppingConfig(enabled=False))]


def test_replay_matches_training_with_early_stopping():
    """The oracle: training with early stopping and replaying its policy on the same run without it agree exactly."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g)
    y = (x[:, 0] + 0.8 * torch.randn(300, generator=g) > 0).long()  # noisy: validation loss turns up early
    ds = Dataset("noisy", x, y, "classification", ["0", "1"])
    cfg = apply_overrides(RunConfig(), {"train.epochs": 40, "model.units": 64, "train.lr": 0.01,
                                        "train.early_stopping.patience": 3, "train.schedule.name": "none"})
    data = prepare_data(cfg, ds)
    _, _, stopped = fit_model(cfg, data)
    _, _, full = fit_model(apply_overrides(cfg, {"train.early_stopping.enabled": False}), data)
    assert stopped.stop_reason.startswith("early stopping") and len(full.history) == 40
    out = replay(full.history, cfg.train.early_stopping)
    assert out == Outcome(stopped.stopped_epoch, stopped.best_epoch)
    assert score(full.history, cfg.train.early_stopping, "val_accuracy") == stopped.best["val_accuracy"]


def test_replay_matches_early_stopping_in_a_population():
    """The same oracle on the population path the evidence trains with: each member, with and without early
    stopping, in one population of three."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 6, generator=g)
    y = (x[:, 0] + 0.8 * torch.randn(300, generator=g) > 0).long()
    ds = Dataset("noisy", x, y, "classification", ["0", "1"])
    base = apply_overrides(RunConfig(), {"train.epochs": 30, "model.units": 64, "train.schedule.name": "none",
                                         "train.early_stopping.patience": 3})
    cfgs = [apply_overrides(base, {"seed": s, "train.lr": lr}) for s, lr in ((1, 0.01), (2, 0.003), (3, 0.03))]
    data = prepare_data(base, ds)
    stopped = fit_configs(cfgs, lambda _: data, 3)
    full = fit_configs([apply_overrides(c, {"train.early_stopping.enabled": False}) for c in cfgs], lambda _: data, 3)
    for (_, a), (_, b), c in zip(stopped, full, cfgs):
        assert replay(b.history, c.train.early_stopping) == Outcome(a.stopped_epoch or len(a.history), a.best_epoch)
        assert score(b.history, c.train.early_stopping, "val_accuracy") == a.best["val_accuracy"]


def test_early_stopping_question_reports_epochs_saved_and_score_lost():
    # validation loss bottoms out at epoch 4; accuracy peaks there too and decays slowly after
    curves = []
    for k in range(6):
        losses = [1.0, 0.7, 0.6, 0.5 + 0.001 * k] + [0.55 + 0.02 * i for i in range(16)]
        accs = [0.6, 0.7, 0.75, 0.8] + [0.79 - 0.005 * i - 0.001 * k for i in range(16)]
        curves.append(curve(losses, accs))
    entry = early_stopping_evidence(curves, EarlyStoppingConfig(patience=5), "val_accuracy", maximize=True,
                                    points=True)
    rows = {r["name"]: r for r in entry["variants"]}
    assert entry["chosen"] == "patience 5" and entry["full_epochs"] == 20 and entry["chosen_epochs"] == 9
    assert rows["patience 3"]["epochs"] == 7 and rows["patience 3"]["diff"] == pytest.approx(0)
    assert rows["off"]["epochs_saved"] == 0 and rows["off"]["ci_high"] < 0  # the last epoch is worse than the best
    assert rows["patience 20"]["n"] == 6
    assert rows["patience 3"]["verdict"] == "equivalent" and rows["off"]["verdict"] == "worse"
    assert "Fewest epochs shown no worse: patience 3 (7.0 epochs, +0.0 points, equivalent)" in entry["verdict"]


def _noise_curves(n: int = 40, epochs: int = 40, seed: int = 0) -> list[list[dict]]:
    """Pure-noise learning curves with the validation split's halves: nothing generalizes, every epoch's accuracy
    on each half (and its loss) is an independent draw around the same value."""
    g = torch.Generator().manual_seed(seed)
    curves = []
    for _ in range(n):
        acc = 0.5 + 0.05 * torch.randn(epochs, 2, generator=g)
        rows = []
        for e in range(epochs):
            a, b = acc[e].tolist()
            rows.append({"epoch": e + 1, "val_accuracy": (a + b) / 2, "val_a_accuracy": a, "val_b_accuracy": b,
                         "val_loss": 1 - (a + b) / 2, "val_a_loss": 1 - a, "val_b_loss": 1 - b})
        curves.append(rows)
    return curves


def test_cross_fitting_removes_the_gain_of_selection_on_pure_noise():
    """On noise, a longer patience looks better when it picks and scores on the same samples (the best of more draws
    is higher); cross-fitted, it gains nothing, and the verdict says no better."""
    curves = _noise_curves()
    chosen, longer = EarlyStoppingConfig(patience=3), EarlyStoppingConfig(patience=20)
    in_sample = [[{k: v for k, v in r.items() if "_a_" not in k and "_b_" not in k} for r in c] for c in curves]
    gain_in_sample = [score(c, longer, "val_accuracy") - score(c, chosen, "val_accuracy") for c in in_sample]
    assert sum(gain_in_sample) / len(curves) > 0.02  # selection alone: +2 points and more on pure noise
    entry = early_stopping_evidence(curves, chosen, "val_accuracy", maximize=True, points=True, resolution=0.005)
    rows = {r["name"]: r for r in entry["variants"]}
    for name in ("patience 10", "patience 20", "off"):
        assert rows[name]["verdict"] != "better" and rows[name]["ci_low"] < 0 < rows[name]["ci_high"] + 0.01
        assert abs(rows[name]["diff"]) < 0.02
    assert not any(r["verdict"] == "better" for r in entry["variants"])


def test_cross_fitted_score_by_hand():
    # half a peaks at epoch 2, half b at epoch 3: each chosen epoch is scored on the other half
    c = [{"epoch": 1, "val_accuracy": 0.5, "val_a_accuracy": 0.5, "val_b_accuracy": 0.5},
         {"epoch": 2, "val_accuracy": 0.65, "val_a_accuracy": 0.9, "val_b_accuracy": 0.4},
         {"epoch": 3, "val_accuracy": 0.6, "val_a_accuracy": 0.3, "val_b_accuracy": 0.9}]
    es = EarlyStoppingConfig(monitor="val_accuracy", patience=5)
    assert score(c, es, "val_accuracy") == pytest.approx((0.4 + 0.3) / 2)
    plain = [{k: v for k, v in r.items() if k in ("epoch", "val_accuracy")} for r in c]
    assert score(plain, es, "val_accuracy") == 0.65  # without halves: in-sample, as recorded before


def test_evidence_runs_log_the_halves_the_same_alone_and_in_a_population():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    ds = Dataset("lin", x, (x[:, 0] > 0).long(), "classification", ["0", "1"])
    cfgs = [apply_overrides(RunConfig(), {"train.epochs": 2, "model.units": 8, "seed": s}) for s in (1, 2)]
    data = prepare_data(cfgs[0], ds)
    together = fit_configs(cfgs, lambda _: data, 2, val_halves=True)
    alone = fit_configs(cfgs, lambda _: data, 1, val_halves=True)
    n = len(data.y_val)
    for (_, a), (_, b) in zip(together, alone):
        row = a.history[-1]
        assert {"val_a_loss", "val_a_accuracy", "val_b_loss", "val_b_accuracy"} <= set(row)
        # the halves are the even and odd validation samples: their accuracies average to the whole split's
        assert (row["val_a_accuracy"] * ((n + 1) // 2) + row["val_b_accuracy"] * (n // 2)) / n == \
            pytest.approx(row["val_accuracy"])
        for k in ("val_a_loss", "val_b_accuracy"):
            assert row[k] == pytest.approx(b.history[-1][k], rel=1e-4)
    assert "val_a_loss" not in fit_configs(cfgs[:1], lambda _: data, 1)[0][1].history[0]


def test_no_curves_says_why():
    es = EarlyStoppingConfig(patience=5)
    assert "no evidence run finished within the time budget" in \
        early_stopping_evidence([], es, "val_accuracy", maximize=True, points=True)["verdict"]
    nan = curve([1.0, float("nan")])
    assert "every evidence run diverged" in \
        early_stopping_evidence([nan], es, "val_accuracy", maximize=True, points=True)["verdict"]
