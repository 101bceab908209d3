from types import SimpleNamespace

import pytest
import torch
from torch import nn

from nntune.config import RunConfig
from nntune.search.ensemble import seed_ensemble


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


def test_an_ensemble_that_only_ties_its_best_seed_is_not_better():
    perfect = _lookup(torch.tensor([[2.2, 0.0]] * 3))
    _, record = seed_ensemble(SimpleNamespace(number=0), RunConfig(), perfect, [_wrong_on(1)], _data(3),
                              "val_accuracy")
    assert record["members"][0] == 1.0 and record["ensemble"] == 1.0 and not record["better"]
    _, by_loss = seed_ensemble(SimpleNamespace(number=0), RunConfig(), perfect, [_wrong_on(1)], _data(3),
                               "val_loss")  # the loss is minimised: a mixture with a wrong seed loses to the sure one
    assert by_loss["ensemble"] > min(by_loss["members"]) and not by_loss["better"]
