"""The population engine against its oracle: every member must train exactly as ``Trainer.fit`` trains it alone."""

import math

import pytest
import torch

from nntune.config import RunConfig, apply_overrides
from nntune.data.sources import Dataset
from nntune.errors import ConfigError, SpecError
from nntune.models.builders import forward_batched
from nntune.training.callbacks import Callback, Deadline
from nntune.training.pipeline import (population_trainer, choose_population_size, fit_configs, fit_model,
                                      fit_population, measure_population_size, prepare_data)
from nntune.training.population import PopulationTrainer
from nntune.training.population.structure import structure_key
from nntune.training.metrics import compute_metrics, make_loss

LRS = (1e-3, 3e-3, 1e-2, 5e-4)


@pytest.fixture(scope="module")
def small_digits(digits):
    return Dataset(digits.name, digits.x[:500].double(), digits.y[:500], digits.task, digits.class_names)


def signals(n=400, length=24, seed=0):
    """1-D signals: a class template (sine of class-dependent frequency) with noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    t = torch.linspace(0, 1, length)
    x = torch.sin(2 * math.pi * (y.double().unsqueeze(1) + 1) * t) + 0.3 * torch.randn(n, length, generator=g)
    return Dataset("signals", x.unsqueeze(1), y, "classification", ["a", "b", "c"])


def regression(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = x @ torch.linspace(-1, 1, 6, dtype=torch.float64) + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    return Dataset("lin", x, y, "regression")


def signal_regression(n=300, length=16, seed=0):
    """1-D signals whose target is the mean of their second half: a regression that needs the sequence."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, length, generator=g, dtype=torch.float64)
    return Dataset("signal-mean", x, x[:, 0, length // 2:].mean(1), "regression")


def members(over: dict, lrs=LRS, **per_member) -> list[RunConfig]:
    """K configs of one structure that differ in LR, seed and weight decay (plus ``per_member`` lists)."""
    base = apply_overrides(RunConfig(), {"train.epochs": 3, **over})
    cfgs = []
    for i, lr in enumerate(lrs):
        extra = {k: v[i] for k, v in per_member.items()}
        cfgs.append(apply_overrides(base, {"train.lr": lr, "seed": i, "train.weight_decay": 0.01 * i, **extra}))
    return cfgs


def assert_same_fit(solo, member):
    """Weights allclose (float64 defaults), identical epochs and stop, histories allclose."""
    (m1, f1), (m2, f2) = solo, member
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert list(s1) == list(s2)
    for k in s1:
        assert torch.allclose(s1[k].double(), s2[k].double()), (k, (s1[k].double() - s2[k].double()).abs().max())
    assert (f1.best_epoch, f1.stopped_epoch, f1.stop_reason) == (f2.best_epoch, f2.stopped_epoch, f2.stop_reason)
    assert [h["epoch"] for h in f1.history] == [h["epoch"] for h in f2.history]
    assert f1.initial_val_loss == pytest.approx(f2.initial_val_loss, rel=1e-5)
    for h1, h2 in zip(f1.history, f2.history):
        assert set(h1) == set(h2)
        for k in h1:
            if k == "grad_norms":
                assert list(h1[k]) == list(h2[k])
                assert [h1[k][n] for n in h1[k]] == pytest.approx([h2[k][n] for n in h1[k]], rel=1e-6)
            elif k != "seconds":  # train metrics in float64, validation metrics in float32 (as compute_metrics)
                assert h1[k] == pytest.approx(h2[k], rel=1e-5, abs=1e-7), k


def solo_and_population(cfgs, data):
    pop = fit_population(cfgs, data)
    solo = [fit_model(c, data) for c in cfgs]
    return [(m, f) for m, _, f in solo], pop


CASES = {
    "mlp-adamw-cosine": ("digits", {}),
    "mlp-bn-sgd-nesterov-onecycle-clip": ("digits", {
        "model.batch_norm": True, "train.optimizer": "sgd", "train.nesterov": True,
        "train.schedule.name": "onecycle", "train.grad_clip": 0.5}),
    "mlp-rmsprop-step-smoothing": ("digits", {
        "train.optimizer": "rmsprop", "train.schedule.name": "step", "train.schedule.step_size": 1,
        "train.label_smoothing": 0.1}),
    "mlp-adam-plateau-warmup": ("digits", {
        "train.optimizer": "adam", "train.schedule.name": "plateau", "train.schedule.warmup_epochs": 1,
        "train.schedule.plateau_patience": 0}),
    "cnn2d-bn": ("digits", {"model.family": "cnn", "model.batch_norm": True, "model.filters": 8,
                            "model.fc_units": 16}),
    "cnn1d-bn": ("signals", {"model.family": "cnn", "model.batch_norm": True, "model.filters": 6,
                             "model.kernel_size": 5, "model.fc_units": 16}),
    "cnn1d-bn-residual-gap-avgpool": ("signals", {
        "model.family": "cnn", "model.batch_norm": True, "model.filters": 6, "model.residual": True,
        "model.convs_per_block": 2, "model.head": "gap", "model.pool": "avg", "model.fc_layers": 0}),
    "cnn1d-tcn-causal": ("signals", {  # the TCN preset's shape: dilated causal residual blocks, no pooling
        "model.preset": "tcn", "model.conv_blocks": 3, "model.filters": 6, "model.causal": True}),
    "mlp-regression": ("regression", {"model.units": 32, "model.batch_norm": True}),
    # recurrent members run as one block-diagonal GRU/LSTM: both cells, directions, depths and poolings
    "rnn-gru-last": ("signals", {"model.family": "rnn", "model.rnn_units": 6, "model.fc_units": 8}),
    "rnn-gru-bi-last-2layers": ("signals", {"model.family": "rnn", "model.bidirectional": True,
                                            "model.rnn_layers": 2, "model.rnn_units": 5, "model.fc_units": 8}),
    # SGD: a bias before batch norm gets a gradient of rounding noise only, which Adam would scale up to LR-sized steps
    "rnn-lstm-bi-mean-frontend-bn-sgd": ("signals", {
        "model.family": "rnn", "model.cell": "lstm", "model.bidirectional": True, "model.pooling": "mean",
        "model.frontend_filters": 4, "model.batch_norm": True, "model.rnn_units": 5, "model.fc_units": 8,
        "train.optimizer": "sgd", "train.momentum": 0.9}),
    "rnn-lstm-attention-3layers-no-head": ("signals", {
        "model.family": "rnn", "model.cell": "lstm", "model.rnn_layers": 3, "model.pooling": "attention",
        "model.rnn_units": 4, "model.fc_layers": 0}),
    "rnn-gru-bi-attention-regression": ("regression-signals", {
        "model.family": "rnn", "model.bidirectional": True, "model.pooling": "attention", "model.rnn_units": 4,
        "model.fc_units": 8}),
}


@pytest.mark.parametrize("stacked", [False, True], ids=["memberwise-opt", "stacked-opt"])
@pytest.mark.parametrize("case", list(CASES))
def test_member_matches_trainer_alone(case, stacked, float64, small_digits, monkeypatch):
    monkeypatch.setattr(PopulationTrainer, "stacked_optimizer", stacked)  # both optimizer paths, whatever the device
    source, over = CASES[case]
    ds = {"digits": small_digits, "signals": signals(), "regression": regression(),
          "regression-signals": signal_regression()}[source]
    cfgs = members(over)
    data = prepare_data(cfgs[0], ds)
    solo, pop = solo_and_population(cfgs, data)
    for s, p in zip(solo, pop):
        assert_same_fit(s, p)
    # each returned member is an ordinary builder module holding its best weights
    model, fit = pop[2]
    out = forward_batched(model, data.x_val)
    out = out if ds.task == "classification" else out.reshape(-1)
    metrics = compute_metrics(out, data.y_val, ds.task, make_loss(ds.task, cfgs[2].train.label_smoothing))
    assert metrics["loss"] == pytest.approx(fit.best["val_loss"], rel=1e-5)


def test_one_member_is_the_trainer_path(small_digits):
    cfg = members({}, lrs=(1e-3,))[0]
    data = prepare_data(cfg, small_digits.__class__(small_digits.name, small_digits.x.float(), small_digits.y,
                                                    small_digits.task, small_digits.class_names))
    (_, pop), (_, _, solo) = fit_population([cfg], data)[0], fit_model(cfg, data)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in solo.history]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in pop.history] == strip


def test_dropout_rates_differ_per_member(float64, small_digits):
    # member 0 has no dropout: it must train exactly as alone without a dropout layer; members 1-3 do drop
    cfgs = members({"train.epochs": 2}, **{"model.dropout": [0.0, 0.3, 0.5, 0.3]})
    data = prepare_data(cfgs[0], small_digits)
    pop = fit_population(cfgs, data)
    m, _, f = fit_model(cfgs[0], data)
    assert_same_fit((m, f), pop[0])
    assert not hasattr(pop[0][0], "drop1") and pop[1][0].drop1.p == 0.3


def test_dropout_on_trains_to_the_same_accuracy_within_noise(digits):
    base = apply_overrides(RunConfig(), {"train.epochs": 8, "model.dropout": 0.3, "model.units": 128})
    cfgs = [apply_overrides(base, {"seed": s}) for s in range(4)]
    data = prepare_data(base, digits)
    pop = [f.best["val_accuracy"] for _, f in fit_population(cfgs, data)]
    solo = [fit_model(c, data)[2].best["val_accuracy"] for c in cfgs]
    assert min(pop) > 0.9 and abs(sum(pop) / 4 - sum(solo) / 4) < 0.02


def test_zero_lr_member_does_not_move(float64, small_digits):
    cfgs = members({"train.epochs": 2, "model.batch_norm": True}, lrs=(1e-3, 1e-3))
    data = prepare_data(cfgs[0], small_digits)
    ds = data.dataset
    from nntune.models.builders import build_model
    from nntune.training.population.structure import union_model_config

    models = [build_model(c.model, ds.input_shape, ds.n_outputs, seed=c.seed) for c in cfgs]
    initial = {k: v.clone() for k, v in models[0].named_parameters()}
    train_cfgs = [cfgs[0].train.model_copy(update={"lr": 0.0}), cfgs[1].train]
    template = build_model(union_model_config(cfgs), ds.input_shape, ds.n_outputs)
    PopulationTrainer(template, models, ds.task, train_cfgs, seeds=[0, 1]).fit(
        data.x_train, data.y_train, data.x_val, data.y_val)
    for k, v in models[0].named_parameters():
        assert torch.equal(v.cpu(), initial[k]), k
    assert not torch.equal(models[0].bn1.running_mean, torch.zeros_like(models[0].bn1.running_mean))
    fresh = build_model(cfgs[1].model, ds.input_shape, 10, seed=1)
    assert not torch.equal(models[1].fc1.weight.cpu(), fresh.fc1.weight)


def test_each_member_stops_at_its_own_epoch(float64, small_digits):
    over = {"train.epochs": 12, "train.lr": 0.05}
    cfgs = members(over, lrs=(0.05, 0.03, 0.05, 0.02),
                   **{"train.early_stopping.patience": [0, 2, 1, 30], "train.epochs": [12, 12, 12, 5]})
    data = prepare_data(cfgs[0], small_digits)
    solo, pop = solo_and_population(cfgs, data)
    stops = [f.stopped_epoch for _, f in pop]
    assert len(set(stops)) >= 3 and pop[3][1].stop_reason == "max_epochs" and len(pop[3][1].history) == 5
    assert any(f.stop_reason.startswith("early stopping") and f.best_epoch < f.stopped_epoch for _, f in pop)
    for s, p in zip(solo, pop):
        assert_same_fit(s, p)


def test_recurrent_members_leave_at_their_own_epochs(float64):
    """Members leaving shrink the block-diagonal layer (K 4 -> 3 -> 1): the rest train on exactly as alone."""
    over = {"model.family": "rnn", "model.bidirectional": True, "model.rnn_units": 4, "model.fc_units": 6}
    cfgs = members(over, **{"train.epochs": [2, 4, 4, 3]})
    data = prepare_data(cfgs[0], signals(n=200, length=12))
    solo, pop = solo_and_population(cfgs, data)
    assert [len(f.history) for _, f in pop] == [2, 4, 4, 3]
    for s, p in zip(solo, pop):
        assert_same_fit(s, p)


def test_a_diverging_member_fails_alone(float64, small_digits):
    cfgs = members({"train.optimizer": "sgd"}, lrs=(0.01, 10.0, 0.05))
    data = prepare_data(cfgs[0], small_digits)
    solo, pop = solo_and_population(cfgs, data)
    assert pop[1][1].stop_reason == "non-finite loss at epoch 2" == solo[1][1].stop_reason
    for i in (0, 2):
        assert pop[i][1].stop_reason == "max_epochs"
        assert_same_fit(solo[i], pop[i])


def test_callbacks_stop_their_own_member(float64, small_digits):
    class StopAt(Callback):
        def __init__(self, epoch):
            self.epoch, self.seen, self.ended = epoch, [], False

        def on_epoch_end(self, trainer, epoch, logs):
            self.seen.append((epoch, round(logs["val_loss"], 6)))
            if epoch == self.epoch:
                trainer.stop("pruned at epoch %d" % epoch)

        def on_train_end(self, trainer):
            self.ended = True

    cfgs = members({"train.epochs": 4}, lrs=(1e-3, 2e-3, 3e-3))
    data = prepare_data(cfgs[0], small_digits)
    cbs = [StopAt(99), StopAt(2), StopAt(99)]
    pop = fit_population(cfgs, data, [[cb] for cb in cbs])
    assert [len(f.history) for _, f in pop] == [4, 2, 4] and pop[1][1].stop_reason == "pruned at epoch 2"
    assert [e for e, _ in cbs[1].seen] == [1, 2] and all(cb.ended for cb in cbs)
    assert cbs[0].seen[0][1] == round(pop[0][1].history[0]["val_loss"], 6)


def test_augmentation_strength_per_member(float64, small_digits):
    cfgs = members({"train.epochs": 2, "preprocess.augment": "light"}, lrs=(1e-3, 1e-3),
                   **{"preprocess.augment_strength": [0.0, 0.8]})
    data = prepare_data(cfgs[0], small_digits)
    pop = fit_population(cfgs, data)
    m, _, f = fit_model(cfgs[0], data)
    assert_same_fit((m, f), pop[0])  # strength 0 is no augmentation, whatever member 1 does
    assert pop[1][1].history[-1]["loss"] != pytest.approx(pop[0][1].history[-1]["loss"])


def test_members_must_share_structure():
    cfgs = [RunConfig(), apply_overrides(RunConfig(), {"model.units": 64})]
    with pytest.raises(SpecError, match="model.units"):
        fit_population(cfgs, prepare_data(cfgs[0]))
    assert structure_key(RunConfig()) == structure_key(apply_overrides(RunConfig(), {"train.lr": 0.1, "seed": 3}))


def test_fit_configs_groups_by_structure_and_keeps_order(small_digits):
    base = apply_overrides(RunConfig(), {"train.epochs": 1})
    cfgs = [apply_overrides(base, {"model.units": u, "seed": i}) for i, u in enumerate((32, 64, 32, 64, 32))]
    data = prepare_data(base, Dataset("d", small_digits.x.float(), small_digits.y, "classification",
                                      small_digits.class_names))
    results = fit_configs(cfgs, lambda c: data, size=2)
    assert [m.fc1.out_features for m, _ in results] == [32, 64, 32, 64, 32]
    assert all(len(f.history) == 1 for _, f in results)


def test_population_size_is_measured_within_the_limit(small_digits):
    ds = Dataset("d", small_digits.x.float(), small_digits.y, "classification", small_digits.class_names)
    cfg = apply_overrides(RunConfig(), {"model.units": 32})
    data = prepare_data(cfg, ds)
    assert choose_population_size(cfg, data, limit=1) == 1
    assert choose_population_size(cfg, data, limit=6) in (1, 2, 4, 6)
    assert measure_population_size(cfg, data, limit=1) == (1, 1.0)
    k, gain = measure_population_size(cfg, data, limit=6)
    assert (k, gain) == (1, 1.0) or gain > 1.15  # a size above 1 is taken only for more than 15 % per member
    with pytest.raises(ConfigError, match="at least 1"):
        choose_population_size(cfg, data, limit=0)


def test_probe_measures_member_steps(small_digits):
    ds = Dataset("d", small_digits.x.float(), small_digits.y, "classification", small_digits.class_names)
    cfgs = members({"model.units": 16}, lrs=(1e-3, 2e-3))
    data = prepare_data(cfgs[0], ds)
    trainer, x = population_trainer(cfgs, data)
    rate, peak = trainer.probe(x, data.y_train, steps=2)
    assert rate > 0 and peak >= 0


def _deadline_after(steps: int) -> Deadline:
    """A time budget that runs out after ``steps`` training steps (asked once per step)."""
    asked = [0]

    def left() -> float:
        asked[0] += 1
        return 1.0 if asked[0] < steps else -1.0
    return Deadline(left)


def test_a_deadline_cuts_the_epoch_at_the_same_step_in_a_population_and_alone(float64, small_digits):
    """350 training samples in batches of 64: 6 steps an epoch, so a deadline at step 9 ends epoch 2 after 3 steps;
    that epoch is validated and recorded on the batches done, the same in both loops."""
    cfgs = members({"train.epochs": 4, "train.early_stopping.enabled": False}, lrs=(1e-3, 3e-3))
    data = prepare_data(cfgs[0], small_digits)
    pop = fit_population(cfgs, data, [[_deadline_after(9)] for _ in cfgs])
    solo = [fit_model(c, data, [_deadline_after(9)]) for c in cfgs]
    for (m, _, f), member in zip(solo, pop):
        assert_same_fit((m, f), member)
        assert len(f.history) == 2 and f.stop_reason == "time budget at epoch 2" and f.stopped_epoch == 2
