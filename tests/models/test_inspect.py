import pytest
import torch
from torch import nn

from nntune.config import ModelConfig
from nntune.errors import ConfigError
from nntune.models import build_model, freeze, summary, unfreeze
from nntune.models.inspect import frozen_layers


def test_hand_computed_counts():
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(1, 32, 3))
    model.add_module("bn", nn.BatchNorm2d(32))
    model.add_module("flat", nn.Flatten())
    model.add_module("fc", nn.Linear(32 * 26 * 26, 64))
    model.add_module("out", nn.Linear(64, 10))
    model.out.requires_grad_(False)
    s = summary(model, (1, 28, 28))
    rows = {r.name: r for r in s.layers}
    assert (rows["conv"].trainable, rows["conv"].non_trainable) == (320, 0)
    assert (rows["bn"].trainable, rows["bn"].non_trainable) == (64, 64)  # running mean + var, not num_batches
    assert (rows["out"].trainable, rows["out"].non_trainable) == (0, 650)
    assert rows["conv"].output_shape == [-1, 32, 26, 26] and rows["fc"].output_shape == [-1, 64]
    fc = 32 * 26 * 26 * 64 + 64
    assert s.trainable == 320 + 64 + fc and s.non_trainable == 64 + 650 and s.total == s.trainable + s.non_trainable
    assert s.to_dict()["layers"][0]["name"] == "conv"


def test_summary_matches_torch_param_count():
    m = build_model(ModelConfig(family="cnn", batch_norm=True, residual=True, convs_per_block=2), (3, 16, 16), 5)
    s = summary(m, (3, 16, 16))
    assert s.trainable == sum(p.numel() for p in m.parameters())
    bn_state = sum(b.numel() for n, b in m.named_buffers() if "running" in n)
    assert s.non_trainable == bn_state


def test_freeze_by_pattern_and_all_but_last():
    m = build_model(ModelConfig(hidden_layers=3, units=8), (4,), 2)
    assert freeze(m, "fc*") == ["fc1", "fc2", "fc3"]
    assert frozen_layers(m) == ["fc1", "fc2", "fc3"]
    s = summary(m, (4,))
    assert s.trainable == 8 * 2 + 2 and s.non_trainable == (4 * 8 + 8) + 2 * (8 * 8 + 8)
    unfreeze(m)
    assert frozen_layers(m) == []
    assert freeze(m, all_but_last=1) == ["fc1", "fc2", "fc3"]
    assert unfreeze(m, last=2) == ["fc3", "out"]
    assert frozen_layers(m) == ["fc1", "fc2"]


def test_freeze_errors():
    m = build_model(ModelConfig(), (4,), 2)
    with pytest.raises(ConfigError, match=r"pattern 'conv\*' matches no layer"):
        freeze(m, "conv*")
    with pytest.raises(ConfigError, match="exactly one"):
        freeze(m)


def test_frozen_layer_gets_no_update(digits):
    from nntune.config import TrainConfig
    from nntune.training.single import Trainer

    m = build_model(ModelConfig(), (1, 8, 8), 10)
    freeze(m, "fc1")
    before, other = m.fc1.weight.clone(), m.fc2.weight.clone()
    Trainer(m, "classification", TrainConfig(epochs=1)).fit(digits.x[:200] / 16, digits.y[:200],
                                                             digits.x[200:300] / 16, digits.y[200:300])
    assert torch.equal(m.fc1.weight.cpu(), before) and not torch.equal(m.fc2.weight.cpu(), other)
