import pytest
import torch
from torch import nn

from nntune.config import ModelConfig, RunConfig, apply_overrides, build_config
from nntune.errors import ConfigError, SpecError
from nntune.models.builders import build_model


def _names(model):
    return [n for n, _ in model.named_children()]


def test_mlp_widths_and_output_logits():
    m = build_model(ModelConfig(hidden_layers=3, units=64, funnel=0.5, dropout=0.2, batch_norm=True), (1, 8, 8), 10)
    linears = [l for l in m.modules() if isinstance(l, nn.Linear)]
    assert [l.out_features for l in linears] == [64, 32, 16, 10]
    assert linears[0].in_features == 64
    assert _names(m) == ["flatten", "fc1", "bn1", "act1", "drop1", "fc2", "bn2", "act2", "drop2",
                         "fc3", "bn3", "act3", "drop3", "out"]
    assert m(torch.randn(4, 1, 8, 8)).shape == (4, 10)


def test_explicit_widths_override():
    m = build_model(ModelConfig(widths=[7, 5]), (3,), 1)
    assert [l.out_features for l in m.modules() if isinstance(l, nn.Linear)] == [7, 5, 1]


def test_cnn_2d_filter_progression_and_dropout_placement():
    cfg = ModelConfig(family="cnn", conv_blocks=3, filters=16, filter_multiplier=2, dropout_after_pool=0.1,
                      dropout_before_fc=0.2, dropout_after_fc=0.3)
    m = build_model(cfg, (1, 28, 28), 10)
    convs = [l for l in m.modules() if isinstance(l, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64]
    assert isinstance(m.drop_pool1, nn.Dropout2d) and m.drop_pool1.p == 0.1
    assert m.drop_before_fc.p == 0.2 and m.head_drop1.p == 0.3
    assert m.head_fc1.in_features == 64 * 3 * 3
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_cnn_without_dropout_has_none():
    m = build_model(ModelConfig(family="cnn"), (1, 8, 8), 10)
    assert not any(isinstance(l, (nn.Dropout, nn.Dropout2d)) for l in m.modules())


def test_cnn_1d_residual_gap():
    cfg = ModelConfig(family="cnn", residual=True, convs_per_block=2, head="gap", batch_norm=True,
                      dropout_after_pool=0.1)
    m = build_model(cfg, (2, 50), 3)
    assert isinstance(m.block1.conv1, nn.Conv1d) and isinstance(m.drop_pool1, nn.Dropout1d)
    assert m.head_fc1.in_features == 64
    assert m(torch.randn(5, 2, 50)).shape == (5, 3)


def test_tcn_preset_dilates_per_block_and_its_parameters_count_by_hand():
    cfg = apply_overrides(RunConfig(), {"model.preset": "tcn", "model.filters": 16}).model
    m = build_model(cfg, (1, 128), 4)
    convs = [c for c in m.modules() if isinstance(c, nn.Conv1d) and c.kernel_size == (3,)]
    assert [c.dilation[0] for c in convs] == [1, 1, 2, 2, 4, 4, 8, 8, 16, 16]
    assert not any(isinstance(l, nn.MaxPool1d) for l in m.modules()) and isinstance(m.gap, nn.AdaptiveAvgPool1d)
    # block 1: conv 1->16 (1·16·3 + 16) + conv 16->16 (16·16·3 + 16) + two batch norms (2·16 each) + 1x1 shortcut
    # (16 + 16); blocks 2-5: two 16->16 convs and two batch norms; the output layer 16·4 + 4
    block1 = 64 + 784 + 2 * 32 + 32
    assert sum(p.numel() for p in m.parameters()) == block1 + 4 * (2 * 784 + 2 * 32) + 68 == 7540
    x = torch.randn(3, 1, 128)
    assert m(x).shape == (3, 4)


def test_a_causal_stack_never_sees_later_steps():
    cfg = ModelConfig(family="cnn", conv_blocks=3, filters=4, filter_multiplier=1, dilation_growth=2, pool="none",
                      causal=True, residual=True, convs_per_block=2, head="gap", fc_layers=0,
                      activation="tanh")  # no ReLU zeros: every step within reach shows
    m = build_model(cfg, (1, 40), 2)
    body = nn.Sequential(m.block1, m.block2, m.block3)  # the per-step features before pooling
    x = torch.randn(1, 1, 40, generator=torch.Generator().manual_seed(0))
    changed = x.clone()
    changed[..., 25:] += 1.0
    y, z = body(x), body(changed)
    assert y.shape == (1, 4, 40)  # the length is kept
    assert torch.equal(y[..., :25], z[..., :25]) and not torch.equal(y[..., 25:], z[..., 25:])
    # receptive field 1 + 2·(3 - 1)·(1 + 2 + 4) = 29: step 28 is the first that sees step 0
    first = x.clone()
    first[..., 0] += 1.0
    w = body(first)
    assert torch.equal(y[..., 29:], w[..., 29:]) and not torch.equal(y[..., 28], w[..., 28])


def test_resnet_preset_and_overrides_win_over_it():
    cfg = build_config({"model": {"preset": "resnet", "filters": 8}}).model
    m = build_model(cfg, (1, 16, 16), 10)
    assert [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3)] == \
        [8, 8, 16, 16, 32, 32]
    assert m.block1.residual and isinstance(m.pool1, nn.MaxPool2d) and m.out.in_features == 32
    with pytest.raises(SpecError, match="model.causal"):
        build_model(cfg.model_copy(update={"causal": True}), (1, 16, 16), 10)
    with pytest.raises(ConfigError, match="model.preset"):
        build_config({"model": {"preset": "vgg"}})


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "elu", "gelu", "silu", "selu", "tanh", "sigmoid"])
def test_every_activation_builds_and_init_is_seeded(act):
    a = build_model(ModelConfig(activation=act), (10,), 2, seed=5)
    b = build_model(ModelConfig(activation=act), (10,), 2, seed=5)
    c = build_model(ModelConfig(activation=act), (10,), 2, seed=6)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.fc1.weight, c.fc1.weight)


def test_init_follows_activation():
    relu = build_model(ModelConfig(units=2000), (2000,), 2).fc2.weight
    assert relu.std().item() == pytest.approx((2 / 2000) ** 0.5, rel=0.05)  # He normal
    tanh = build_model(ModelConfig(units=2000, activation="tanh"), (2000,), 2).fc2.weight
    bound = 5 / 3 * (6 / 4000) ** 0.5  # Xavier uniform with tanh gain
    assert tanh.abs().max().item() <= bound and tanh.abs().max().item() > 0.95 * bound


def test_invalid_specs_name_field_and_value():
    with pytest.raises(SpecError, match=r"model.conv_blocks: 4 .*8x8 input below 1 pixel at block 4"):
        build_model(ModelConfig(family="cnn", conv_blocks=4), (1, 8, 8), 10)
    with pytest.raises(SpecError, match=r"model.family: cnn needs .* got input shape \(5,\)"):
        build_model(ModelConfig(family="cnn"), (5,), 2)
    from nntune.errors import ConfigError
    from nntune.config import build_config
    with pytest.raises(ConfigError, match=r"model.hidden_layers"):
        build_config({"model": {"hidden_layers": 0}})
    with pytest.raises(ConfigError, match=r"model.activation.*swish"):
        build_config({"model": {"activation": "swish"}})
