import pytest
import torch
from torch import nn

from nntune.config import ModelConfig
from nntune.errors import SpecError
from nntune.models.ensemble import Ensemble, build_ensemble


def _members(n, d_in=5, d_out=3):
    torch.manual_seed(0)
    return [nn.Linear(d_in, d_out) for _ in range(n)]


def test_classification_outputs_are_the_log_of_the_mean_probability():
    members = _members(3)
    x = torch.randn(7, 5)
    out = Ensemble(members, classification=True)(x)
    mean = torch.stack([torch.softmax(m(x), dim=1) for m in members]).mean(0)  # the oracle, computed directly
    assert torch.allclose(torch.softmax(out, dim=1), mean, atol=1e-6)
    assert torch.allclose(out.exp().sum(1), torch.ones(7), atol=1e-6)  # already normalised: log-probabilities
    assert torch.allclose(nn.functional.cross_entropy(out, torch.zeros(7, dtype=torch.long)),
                          nn.functional.nll_loss(mean.log(), torch.zeros(7, dtype=torch.long)), atol=1e-6)


def test_regression_outputs_are_the_mean():
    members = _members(2, d_out=1)
    x = torch.randn(4, 5)
    assert torch.allclose(Ensemble(members, classification=False)(x), (members[0](x) + members[1](x)) / 2)


def test_an_ensemble_needs_two_members_and_builds_from_a_config():
    with pytest.raises(SpecError, match="at least two members"):
        Ensemble(_members(1), classification=True)
    ens = build_ensemble(ModelConfig(family="mlp", hidden_layers=1, units=8), (4,), 3, 2, classification=True)
    assert len(ens.members) == 2 and ens(torch.randn(2, 4)).shape == (2, 3)
    a, b = (dict(m.named_parameters())["fc1.weight"] for m in ens.members)
    assert not torch.equal(a, b)  # seeded apart (the saved weights replace them anyway)
