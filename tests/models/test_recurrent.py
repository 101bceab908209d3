"""The recurrent family: parameter counts against hand-computed numbers, a task that needs memory over the whole
sequence, the search space per data kind, gradient clipping by default, one trial at a time in a search."""

import json

import numpy as np
import optuna
import pytest
import torch

from nntune.cli import main
from nntune.config import ModelConfig, RunConfig, apply_overrides
from nntune.data.sources import Dataset
from nntune.errors import SpecError
from nntune.models.builders import build_model
from nntune.models.inspect import summary
from nntune.search.space import resolve_space
from nntune.training.pipeline import train


def _rnn(**kw) -> ModelConfig:
    return ModelConfig(family="rnn", fc_layers=0, **kw)


@pytest.mark.parametrize("kw, recurrent", [
    # PyTorch keeps two bias vectors per gate: per direction and layer, gates * (H*I + H*H + 2*H)
    ({"cell": "gru", "rnn_units": 8}, 3 * (8 * 2 + 8 * 8 + 2 * 8)),                                  # 288
    ({"cell": "lstm", "rnn_units": 8}, 4 * (8 * 2 + 8 * 8 + 2 * 8)),                                 # 384
    ({"cell": "gru", "rnn_units": 8, "rnn_layers": 2, "bidirectional": True},
     2 * 3 * (8 * 2 + 8 * 8 + 2 * 8) + 2 * 3 * (8 * 16 + 8 * 8 + 2 * 8)),                            # 576 + 1248
    ({"cell": "lstm", "rnn_units": 4, "bidirectional": True}, 2 * 4 * (4 * 2 + 4 * 4 + 2 * 4)),      # 256
])
def test_parameter_counts_match_hand_computed_numbers(kw, recurrent):
    model = build_model(_rnn(**kw), (2, 20), 3)
    width = kw["rnn_units"] * (2 if kw.get("bidirectional") else 1)
    s = summary(model, (2, 20))
    assert s.trainable == recurrent + width * 3 + 3 and s.non_trainable == 0
    assert next(r for r in s.layers if r.name == "recurrent.rnn").trainable == recurrent


def test_pooling_front_end_and_seeded_initialisation():
    x = torch.randn(5, 2, 20)
    for pooling in ("last", "mean", "attention"):
        cfg = _rnn(pooling=pooling, frontend_filters=4, batch_norm=True, bidirectional=True)
        a, b = build_model(cfg, (2, 20), 3, seed=7), build_model(cfg, (2, 20), 3, seed=7)
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
        assert a.eval()(x).shape == (5, 3)
    lstm = build_model(_rnn(cell="lstm", rnn_units=4), (2, 20), 3).recurrent.rnn
    assert torch.equal(lstm.bias_ih_l0[4:8], torch.ones(4))  # forget gates start open
    with pytest.raises(SpecError, match="rnn needs signals"):
        build_model(_rnn(), (1, 8, 8), 3)


def _marked_sign(n=2000, length=30, marks=3, seed=0) -> Dataset:
    """The label is the sign of the sum of the values at 3 marked positions: the model must remember values seen
    anywhere in the sequence until its end."""
    g = np.random.default_rng(seed)
    values = g.choice([-1.0, 1.0], size=(n, length))
    flags = np.zeros((n, length))
    for i in range(n):
        flags[i, g.choice(length, marks, replace=False)] = 1.0
    y = ((values * flags).sum(1) > 0).astype(np.int64)
    x = np.stack([values, flags], 1).astype(np.float32)
    return Dataset("marked", torch.tensor(x), torch.tensor(y), "classification", ["neg", "pos"])


def test_a_task_that_needs_memory_over_the_sequence_is_learned():
    cfg = apply_overrides(RunConfig(), {"model.family": "rnn", "model.rnn_units": 32, "train.epochs": 30,
                                        "train.lr": 3e-3, "preprocess.scaler": "none"})
    result = train(cfg, dataset=_marked_sign())
    assert result["test"]["accuracy"] >= 0.95
    assert "recurrent.rnn" in result["history"][0]["grad_norms"]  # diagnostics watch the recurrent matrix


def test_gradient_clipping_defaults_by_family_and_can_be_set_or_turned_off():
    from nntune.training.settings import training_settings
    from nntune.training.pipeline import fit_model, prepare_data

    rnn = apply_overrides(RunConfig(), {"model.family": "rnn"})
    assert training_settings(rnn).grad_clip == 1.0 and rnn.train.grad_clip is None  # resolved late, per family
    assert training_settings(apply_overrides(rnn, {"train.grad_clip": 5.0})).grad_clip == 5.0
    assert training_settings(apply_overrides(rnn, {"train.grad_clip": 0})).grad_clip == 0  # 0: never clip
    assert training_settings(apply_overrides(rnn, {"model.family": "mlp"})).grad_clip is None  # follows the family
    ds = _marked_sign(n=100)
    cfg = apply_overrides(rnn, {"train.epochs": 1, "preprocess.scaler": "none"})
    _, trainer, _ = fit_model(cfg, prepare_data(cfg, ds))
    assert trainer.cfg.grad_clip == 1.0


def test_the_search_offers_recurrent_models_for_signals_only():
    def families(kind, shape):
        family = next(p for p in resolve_space(RunConfig(), kind, shape) if p.key == "model.family")
        return set(family.choices) if family.kind == "choice" else {family.value}

    assert families("signal", (1, 64)) == {"mlp", "cnn", "rnn"}
    assert "rnn" not in families("image", (1, 8, 8)) and families("tabular", (10,)) == {"mlp"}


def test_recurrent_trials_train_as_populations_in_a_search(tmp_path):
    from nntune.search.study import tune

    ds = _marked_sign(n=300)
    cfg = apply_overrides(RunConfig(), {"search.trials": 3, "search.epochs": 1, "train.epochs": 1,
                                        "search.population": 3, "search.finalists": 0,
                                        "search.space": {"model.family": "rnn", "model.rnn_units": 8,
                                                         "model.bidirectional": False, "model.rnn_layers": 1}})
    result = tune(cfg, tmp_path, dataset=ds)
    assert result["study"]["population_sizes"] == {"all": 3}
    study = optuna.load_study(study_name=result["study"]["name"], storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [t.user_attrs["population"]["size"] for t in study.trials] == [3, 3, 3]  # one population of three
    assert result["chosen_config"]["model"]["family"] == "rnn"


def test_summary_command_shows_the_recurrent_layer(capsys):
    main(["summary", "--family", "rnn", "--cell", "gru", "--rnn-units", "8", "--input-shape", "2,20", "--outputs",
          "3", "--json"])
    data = json.loads(capsys.readouterr().out)
    row = next(r for r in data["layers"] if r["name"] == "recurrent.rnn")
    assert row["type"] == "GRU" and row["trainable"] == 288 and row["output_shape"] == [-1, 20, 8]
