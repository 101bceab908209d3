"""Common checks, scikit-learn style: every registry entry goes through the same checks, so a new activation,
optimizer, schedule or model family cannot land without passing them.

1. Equivalence: every schedule × optimizer × stackable family trains in the population engine exactly as the
   single-model Trainer trains each member alone (float64, allclose), each with an activation chosen so that every
   activation meets every schedule, optimizer and family (a pairwise covering of the full product, 160 cases
   instead of 1280), and the optimizer path alternating between the stacked (GPU) and member-by-member (CPU) kernels.
   Dropout is left out: its masks are drawn per population, so it is equivalent in distribution only
   (tests/training/test_population.py checks that).
2. Round trip: every builder family on every data kind it accepts is summarized, saved, loaded, predicted and
   exported (TorchScript), and the loaded and exported models agree with the trained one.
"""

import itertools
import math

import pytest
import torch

from nntune import artifacts, registry
from nntune.config import RunConfig, apply_overrides
from nntune.data.sources import Dataset
from nntune.export import export, load_exported
from nntune.models.builders import build_model, forward_batched
from nntune.models.inspect import summary
from nntune.training.pipeline import fit_model, population_trainer, prepare_data

# per-epoch parameters chosen so every schedule changes the LR within three epochs
SCHEDULE_SETTINGS = {"train.schedule.step_size": 1, "train.schedule.milestones": [1, 2],
                     "train.schedule.restart_period": 1, "train.schedule.plateau_patience": 0}
FAMILIES = {
    "mlp": ("image", {"model.family": "mlp", "model.hidden_layers": 1, "model.units": 8}),
    "cnn1d": ("signal", {"model.family": "cnn", "model.conv_blocks": 1, "model.filters": 3, "model.kernel_size": 3,
                         "model.fc_units": 6}),
    "cnn2d": ("image", {"model.family": "cnn", "model.conv_blocks": 1, "model.filters": 3, "model.fc_units": 6}),
    "rnn": ("signal", {"model.family": "rnn", "model.rnn_units": 3, "model.fc_units": 5}),
}
STACKABLE = sorted(FAMILIES)


def _covering() -> list[tuple[str, str, str, str]]:
    """Every (schedule, optimizer, family), each with the activation that meets the most activation pairs not yet
    met: every activation then appears with every schedule, optimizer and family."""
    met: set[tuple[str, str]] = set()
    combos = []
    for schedule, optimizer, family in itertools.product(registry.names(registry.SCHEDULES),
                                                         registry.names(registry.OPTIMIZERS), STACKABLE):
        pairs = lambda a: {(a, schedule), (a, optimizer), (a, family)}  # noqa: E731
        activation = max(registry.names(registry.ACTIVATIONS), key=lambda a: len(pairs(a) - met))
        met |= pairs(activation)
        combos.append((schedule, optimizer, activation, family))
    return combos


COMBOS = _covering()


def _data(kind: str, n: int = 40, dtype=torch.float64) -> Dataset:
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (n,), generator=g)
    if kind == "tabular":
        x = torch.randn(n, 5, generator=g, dtype=dtype) + y.to(dtype).unsqueeze(1)
    elif kind == "signal":
        t = torch.linspace(0, 1, 12, dtype=dtype)
        x = (torch.sin(2 * math.pi * (y.to(dtype).unsqueeze(1) + 1) * t)
             + 0.3 * torch.randn(n, 12, generator=g, dtype=dtype)).unsqueeze(1)
    else:
        x = torch.rand(n, 1, 6, 6, generator=g, dtype=dtype) + 0.3 * y.to(dtype).view(-1, 1, 1, 1)
    return Dataset(f"tiny-{kind}", x, y, "classification", ["a", "b", "c"])


def test_the_cases_cover_every_pair():
    acts = registry.names(registry.ACTIVATIONS)
    for others in (registry.names(registry.SCHEDULES), registry.names(registry.OPTIMIZERS), STACKABLE):
        seen = {(c[2], x) for c in COMBOS for x in c if x in others}
        assert seen == set(itertools.product(acts, others))


@pytest.fixture(scope="class")
def prepared():
    """Prepared tiny data per kind, in float64 and one thread (tensors this small only lose to thread hand-offs)."""
    before, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    cache = {}

    def get(kind: str):
        if kind not in cache:
            cache[kind] = prepare_data(RunConfig(), _data(kind))
        return cache[kind]

    yield get
    torch.set_default_dtype(before)
    torch.set_num_threads(threads)


class TestEquivalence:
    """Float64 population-vs-Trainer equivalence; the float64 default ends with the class."""

    @pytest.mark.parametrize("schedule,optimizer,activation,family", COMBOS,
                             ids=["-".join(c) for c in COMBOS])
    def test_population_matches_trainer(self, prepared, schedule, optimizer, activation, family):
        kind, model = FAMILIES[family]
        base = apply_overrides(RunConfig(), {**model, **SCHEDULE_SETTINGS, "train.epochs": 3, "train.batch_size": 16,
                                             "train.schedule.name": schedule, "train.optimizer": optimizer,
                                             "model.activation": activation, "train.early_stopping.enabled": False})
        cfgs = [apply_overrides(base, {"seed": i, "train.lr": lr, "train.weight_decay": wd})
                for i, (lr, wd) in enumerate([(3e-3, 0.0), (1e-2, 0.05)])]
        data = prepared(kind)
        trainer, x_train = population_trainer(cfgs, data)
        trainer.stacked_optimizer = COMBOS.index((schedule, optimizer, activation, family)) % 2 == 0
        fits = trainer.fit(x_train, data.y_train, data.x_val, data.y_val)
        for cfg, member, fit in zip(cfgs, trainer.members, fits):
            solo, _, solo_fit = fit_model(cfg, data)
            for key, value in solo.state_dict().items():
                assert torch.allclose(value.double(), member.state_dict()[key].double()), key
            assert (solo_fit.best_epoch, solo_fit.stop_reason) == (fit.best_epoch, fit.stop_reason)
            for h1, h2 in zip(solo_fit.history, fit.history):
                assert h1["lr"] == pytest.approx(h2["lr"], rel=1e-9)
                assert h1["loss"] == pytest.approx(h2["loss"], rel=1e-6, abs=1e-9)
                assert h1["val_loss"] == pytest.approx(h2["val_loss"], rel=1e-5, abs=1e-7)


ROUND_TRIPS = {
    "mlp-tabular": ("tabular", {"model.family": "mlp", "model.units": 8}),
    "mlp-signal": ("signal", {"model.family": "mlp", "model.units": 8}),
    "mlp-image": ("image", {"model.family": "mlp", "model.units": 8, "model.dropout": 0.2}),
    "cnn-signal": ("signal", {"model.family": "cnn", "model.conv_blocks": 1, "model.filters": 4,
                              "model.batch_norm": True}),
    "cnn-image": ("image", {"model.family": "cnn", "model.conv_blocks": 1, "model.filters": 4, "model.head": "gap"}),
    "cnn-signal-tcn-causal": ("signal", {"model.preset": "tcn", "model.conv_blocks": 2, "model.filters": 4,
                                         "model.causal": True}),
    "cnn-image-resnet": ("image", {"model.preset": "resnet", "model.conv_blocks": 1, "model.filters": 4}),
    "rnn-signal": ("signal", {"model.family": "rnn", "model.rnn_units": 8}),
}


@pytest.mark.parametrize("case", sorted(ROUND_TRIPS))
def test_builder_round_trip(case, tmp_path):
    kind, model = ROUND_TRIPS[case]
    ds = _data(kind, n=60, dtype=torch.float32)
    cfg = apply_overrides(RunConfig(), {**model, "train.epochs": 1})
    data = prepare_data(cfg, ds)
    trained, _, _ = fit_model(cfg, data)
    info = summary(trained, ds.input_shape)  # Keras's convention: float buffers (batch-norm statistics) count
    assert info.trainable == sum(p.numel() for p in trained.parameters())
    assert info.non_trainable == sum(b.numel() for b in trained.buffers() if b.is_floating_point())
    fresh = build_model(cfg.model, ds.input_shape, ds.n_outputs)
    assert [k for k, _ in fresh.state_dict().items()] == list(trained.state_dict())
    artifacts.save(tmp_path / "best", trained, cfg, data.scaler, ds.meta())
    art = artifacts.load(tmp_path / "best")
    raw = ds.x[:7]
    expected = forward_batched(trained, data.scaler.transform(raw))
    assert torch.allclose(art.predict_raw(raw), expected, atol=1e-5)
    exported = export(tmp_path / "best", "torchscript", tmp_path / "model.pt")
    assert exported["max_abs_diff"] < 1e-4
    probs = torch.as_tensor(load_exported(tmp_path / "model.pt").predict_proba(raw))
    assert torch.allclose(probs, expected.softmax(1), atol=1e-4)
