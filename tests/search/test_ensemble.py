import statistics
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from nntune.config import ModelConfig, RunConfig
from nntune.search.ensemble import finalist_pool, seed_ensemble


def _lookup(table: torch.Tensor) -> nn.Module:
    """A model whose logits for the one-hot input of sample i are ``table[i]``."""
    model = nn.Linear(table.shape[0], table.shape[1], bias=False)
    with torch.no_grad():
        model.weight.copy_(table.T)
    return model


def _data(n: int) -> SimpleNamespace:
    return SimpleNamespace(dataset=SimpleNamespace(task="classification"), x_val=torch.eye(n),
                           y_val=torch.zeros(n, dtype=torch.long))


def _wrong_on(i: int, n: int = 3) -> nn.Module:
    logits = torch.tensor([[2.2, 0.0]] * n)
    logits[i] = torch.tensor([0.0, 2.2])  # sure of the wrong class on sample i alone
    return _lookup(logits)


def test_seeds_wrong_on_different_samples_validate_better_together():
    trial = SimpleNamespace(number=4)
    _, record = seed_ensemble(trial, RunConfig(), _wrong_on(0), [_wrong_on(1), _wrong_on(2)], _data(3),
                              "val_accuracy")
    assert record["members"] == pytest.approx([2 / 3] * 3) and record["ensemble"] == 1.0 and record["better"]
    assert record["trial"] == 4 and record["size"] == 3


def test_an_ensemble_is_measured_against_the_mean_of_its_seeds_not_the_luckiest():
    # two sure seeds and one that is wrong on every sample: each right one scores 1.0, the mean of the three 2/3
    right = _lookup(torch.tensor([[2.2, 0.0]] * 3))
    wrong = _lookup(torch.tensor([[0.0, 2.2]] * 3))
    _, record = seed_ensemble(SimpleNamespace(number=0), RunConfig(), right, [right, wrong], _data(3),
                              "val_accuracy")
    assert record["ensemble"] == 1.0 and record["better"]  # beats the typical seed (2/3), ties the best (1.0)
    # with a loss (minimised), a mixture is never worse than the mean of its members' losses (Jensen): taken
    _, by_loss = seed_ensemble(SimpleNamespace(number=0), RunConfig(), right, [wrong], _data(3), "val_loss")
    assert by_loss["ensemble"] < statistics.fmean(by_loss["members"]) and by_loss["better"]


def test_an_ensemble_that_does_not_beat_its_typical_seed_is_not_taken():
    # three identical seeds: the ensemble equals each of them, so nothing is gained
    same = _wrong_on(0)
    _, record = seed_ensemble(SimpleNamespace(number=0), RunConfig(), same, [same, same], _data(3), "val_accuracy")
    assert record["ensemble"] == pytest.approx(2 / 3) and not record["better"]


def _nll(models, data) -> float:
    """The oracle: the negative log of the mean probability the models give the true class."""
    with torch.no_grad():
        probs = torch.stack([torch.softmax(m(data.x_val), 1) for m in models]).mean(0)
    return float(-probs[torch.arange(len(data.y_val)), data.y_val].log().mean())


def test_other_finalists_join_the_seeds_when_they_lower_the_validation_loss():
    data = _data(3)
    # the chosen configuration's seeds agree on their mistake
    seeds, measured = seed_ensemble(SimpleNamespace(number=0), RunConfig(), _wrong_on(0), [_wrong_on(0)], data,
                                    "val_accuracy")
    spec = ModelConfig(units=32)
    pool, record = finalist_pool(seeds, measured["loss"], RunConfig(),
                                 [(7, spec, [_wrong_on(1)]), (9, spec, [_wrong_on(2)])], data, "val_accuracy")
    members = [*seeds.members, *pool.members[2:]]
    assert record["seeds_loss"] == pytest.approx(_nll(seeds.members, data), abs=1e-5)
    assert record["loss"] == pytest.approx(_nll(members, data), abs=1e-5)
    assert record["loss"] < record["seeds_loss"]
    assert record["taken"] and record["trials"] == [7, 9] and record["size"] == 4 and record["score"] == 1.0
    assert pool.specs == [RunConfig().model] * 2 + [spec] * 2  # saved with each member's architecture


def test_a_finalist_that_raises_the_validation_loss_is_left_out():
    data = _data(3)
    seeds, measured = seed_ensemble(SimpleNamespace(number=0), RunConfig(), _wrong_on(0), [_wrong_on(1)], data,
                                    "val_accuracy")
    wrong = _lookup(torch.tensor([[0.0, 2.2]] * 3))  # sure of the wrong class everywhere
    _, record = finalist_pool(seeds, measured["loss"], RunConfig(), [(3, ModelConfig(), [wrong])], data,
                              "val_accuracy")
    assert record["loss"] > record["seeds_loss"] and not record["taken"]
