"""The run context: population sizes are measured once per size class, and recurrent sizes apart."""

import torch

from nntune.config import RunConfig, apply_overrides
from nntune.data.sources import Dataset
from nntune.training import context
from nntune.training.context import RunContext, size_class
from nntune.training.pipeline import prepare_data


def _rnn(cell="gru", units=64):
    return apply_overrides(RunConfig(), {"model.family": "rnn", "model.cell": cell, "model.rnn_units": units})


def test_size_class_keeps_recurrent_cells_and_sizes_apart():
    assert size_class(RunConfig()) == "mlp"
    assert size_class(apply_overrides(RunConfig(), {"model.family": "cnn", "model.filters": 64})) == "cnn"
    assert [size_class(_rnn(units=u)) for u in (16, 22, 23, 48, 64, 91, 256)] == [
        "rnn-gru-16", "rnn-gru-16", "rnn-gru-32", "rnn-gru-64", "rnn-gru-64", "rnn-gru-128", "rnn-gru-256"]
    assert size_class(_rnn("lstm", 16)) == "rnn-lstm-16"


def test_population_size_is_measured_once_per_size_class(monkeypatch):
    measured = []

    def fake(cfg, data, seconds):
        measured.append(size_class(cfg))
        return (8, 1.5) if cfg.model.rnn_units < 32 else (1, 1.0)

    monkeypatch.setattr(context, "measure_population_size", fake)
    g = torch.Generator().manual_seed(0)
    ds = Dataset("s", torch.randn(60, 1, 8, generator=g), torch.randint(0, 2, (60,), generator=g), "classification",
                 ["a", "b"])
    ctx = RunContext(RunConfig(), prepare_data(RunConfig(), ds))
    sizes = [ctx.population_size(_rnn(units=u)) for u in (16, 128, 20, 120)]
    assert sizes == [8, 1, 8, 1] and measured == ["rnn-gru-16", "rnn-gru-128"]
    assert ctx.stacking_gain(_rnn(units=20)) == 1.5 and ctx.stacking_gain(_rnn(units=128)) == 1.0
    ctx.shrink_population(_rnn(units=16), 8)
    assert ctx.population_size(_rnn(units=18)) == 4 and ctx.population_size(_rnn(units=128)) == 1
    assert ctx.stacking_gain(_rnn(units=18)) is None  # halved, not measured: the estimates fall back to the bound
