import optuna
import pytest

from nntune.config import RunConfig
from nntune.errors import ConfigError
from nntune.config import apply_overrides
from nntune.search.space import (
    default_space,
    default_trials,
    is_member_key,
    parse_space,
    resolve_space,
    sample,
    structure_values,
    to_config,
    trial_epochs,
)


def test_impossible_ranges_name_the_key_path():
    cases = [
        ({"train.lr": {"low": 0.1, "high": 0.01}}, r"search.space.train.lr: low 0.1 > high 0.01"),
        ({"train.lr": {"low": 0, "high": 0.1, "log": True}}, r"train.lr: a log range needs low > 0"),
        ({"model.activation": {"choice": []}}, r"model.activation: choice must be a non-empty list"),
        ({"model.depth": {"low": 1, "high": 3}}, r"search.space.model.depth: .model.depth. is not a config key"),
        ({"data.val_fraction": [0.1, 0.2]}, r"data.val_fraction. is fixed for the whole search"),
        ({"model.hidden_widths": [1]}, r"is not a config key"),
        ({"model.dropout_rate": {"low": 0.1, "high": 1.5}}, r"model.dropout_rate: value 1.5 is invalid"),
        ({"model.units": {"low": 8, "high": 9, "when": {"model.famly": "mlp"}}}, r"when: unknown key .model.famly."),
        ({"model.units": {"low": 1}}, r"model.units: a range needs low and high"),
        ({"model.activaton": ["relu"]}, r"not a config key; searchable keys .*; did you mean 'model.activation'\?"),
        ({"model.units": {"low": 8, "high": 9, "when": {"model.famly": "mlp"}}}, r"did you mean 'model.family'\?"),
        ({"model.hidden_layers": {"low": 0, "high": 3}}, r"model.hidden_layers: value 0 is invalid"),
        ({"model.activation": {"choice": ["relu", "swish"]}}, r"model.activation: value 'swish' is invalid"),
    ]
    for spec, message in cases:
        with pytest.raises(ConfigError, match=message):
            parse_space(spec)


def test_fixed_choice_and_range_kinds():
    params = {p.key: p for p in parse_space({
        "model.activation": "gelu", "train.batch_size": [32, 64], "model.units": {"low": 16, "high": 64, "step": 16},
        "train.lr": {"low": 1e-4, "high": 1e-2, "log": True}})}
    assert params["model.activation"].kind == "fixed" and params["train.batch_size"].kind == "choice"
    assert params["model.units"].kind == "int" and params["model.units"].grid_values() == [16, 32, 48, 64]
    assert params["train.lr"].kind == "float" and params["train.lr"].grid_values()[0] == pytest.approx(1e-4)


def test_conditional_keys_only_sampled_when_active():
    params = resolve_space(RunConfig(), "image", (1, 8, 8))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_family = set()
    for _ in range(30):
        trial = study.ask()
        cfg, values = sample(trial, params, RunConfig())
        family = values["model.family"]
        seen_family.add(family)
        assert ("model.filters" in values) == (family == "cnn")
        assert ("model.hidden_layers" in values) == (family == "mlp")
        sched = values["train.schedule.name"]
        assert ("train.schedule.step_size" in values) == (sched == "step")
        assert ("train.schedule.gamma" in values) == (sched in ("step", "exponential"))
        assert cfg.model.family == family and cfg.train.schedule.name == sched
        study.tell(trial, 0.0)
    assert seen_family == {"mlp", "cnn"}


def test_space_fits_the_data_kind_shape_and_size():
    table = default_space("tabular", (5,), n_train=300)
    assert table["model.family"] == "mlp" and "model.filters" not in table and "preprocess.augment" not in table
    assert table["train.batch_size"] == {"choice": [16, 32, 64]}
    assert default_space("tabular", (5,), n_train=5000)["train.batch_size"] == {"choice": [32, 64, 128]}
    # images: blocks leave at least 2 pixels; image presets only, the RGB one for 3 channels
    assert default_space("image", (1, 8, 8))["model.conv_blocks"]["high"] == 2
    assert default_space("image", (1, 28, 28))["model.conv_blocks"]["high"] == 3
    assert default_space("image", (1, 2, 2))["model.conv_blocks"] == 1
    assert default_space("image", (1, 28, 28))["preprocess.augment"] == {"choice": ["none", "light", "digits"]}
    assert default_space("image", (3, 32, 32))["preprocess.augment"] == {"choice": ["none", "light", "natural"]}
    # signals: blocks keep a pooled length >= 4, longer kernels for longer signals, signal ops only
    sig = default_space("signal", (1, 64))
    assert sig["model.conv_blocks"]["high"] == 4 and sig["model.kernel_size"]["choice"] == [3, 5, 7, 9]
    assert sig["preprocess.augment"] == {"choice": ["none", "light", "signal"]}
    short = default_space("signal", (2, 40))
    assert short["model.conv_blocks"]["high"] == 3 and short["model.kernel_size"]["choice"] == [3, 5, 7]
    assert default_space("signal", (1, 8))["model.conv_blocks"] == 1


def test_trial_epochs_scale_with_the_data_size():
    assert [trial_epochs(n) for n in (100, 1250, 3500, 100_000)] == [60, 40, 14, 12]


def test_every_default_space_builds_valid_configs():
    for kind, shape in (("tabular", (7,)), ("signal", (1, 64)), ("image", (1, 28, 28)), ("image", (3, 32, 32))):
        parse_space(default_space(kind, shape))  # checks every extreme value against the config schema


def test_lr_centred_on_range_test():
    expected = pytest.approx({"low": 3e-4, "high": 3e-2, "log": True})
    assert default_space("image", (1, 8, 8), lr_center=3e-3)["train.lr"] == expected


def test_dropout_placement_translates_to_rates():
    cfg = to_config(RunConfig(), {"model.dropout_placement": "after_pool+after_fc", "model.dropout_rate": 0.3})
    m = cfg.model
    assert (m.dropout_after_pool, m.dropout_before_fc, m.dropout_after_fc) == (0.3, 0.0, 0.3)
    m = to_config(RunConfig(), {"model.dropout_placement": "none"}).model
    assert (m.dropout_after_pool, m.dropout_before_fc, m.dropout_after_fc) == (0.0, 0.0, 0.0)


def test_user_space_overrides_default():
    cfg = RunConfig.model_validate({"search": {"space": {"model.family": "mlp", "model.activation": ["relu"]}}})
    params = {p.key: p for p in resolve_space(cfg, "image", (1, 8, 8))}
    assert params["model.family"].kind == "fixed" and params["model.activation"].choices == ("relu",)


def test_default_trials_are_the_default_config_per_family():
    params = resolve_space(RunConfig(), "signal", (1, 64))
    mlp, cnn, tcn = default_trials(params, RunConfig(), "signal")  # the RNN is searched, not a default beside them
    d = RunConfig()
    assert mlp["model.family"] == "mlp" and cnn["model.family"] == "cnn"
    # the TCN preset, within the space's ranges (4 blocks of the preset's 5 fit a length of 64), with kernel 7 so that
    # the 4 blocks see 1 + 2·(7 - 1)·(2⁴ - 1) = 181 steps
    assert {k: tcn[k] for k in ("model.family", "model.residual", "model.convs_per_block", "model.dilation_growth",
                                "model.pool", "model.head", "model.conv_blocks", "model.filters",
                                "model.kernel_size")} == {
        "model.family": "cnn", "model.residual": True, "model.convs_per_block": 2, "model.dilation_growth": 2,
        "model.pool": "none", "model.head": "gap", "model.conv_blocks": 4, "model.filters": 32,
        "model.kernel_size": 7}
    short = default_trials(resolve_space(RunConfig(), "signal", (1, 16)), RunConfig(), "signal")[2]
    assert short["model.kernel_size"] == 7 and short["model.conv_blocks"] == 2  # 7 is offered at every length
    assert cnn["model.residual"] is False and cnn["model.pool"] == "max" and cnn["model.dilation_growth"] == 1
    # images: residual blocks and two convolutions per block are searched, dilation and pooling are not
    image = {p.key for p in resolve_space(RunConfig(), "image", (1, 28, 28))}
    assert {"model.residual", "model.convs_per_block"} <= image and not {"model.pool", "model.dilation_growth"} & image
    # images: the plain CNN and the regularized one (batch norm, dropout before the FC layer, the space's augmentation)
    _, plain, regularized = default_trials(resolve_space(RunConfig(), "image", (1, 28, 28)), RunConfig(), "image")
    assert {k: regularized[k] for k in ("model.family", "model.batch_norm", "model.dropout_placement",
                                        "model.dropout_rate", "preprocess.augment", "preprocess.augment_strength")} == {
        "model.family": "cnn", "model.batch_norm": True, "model.dropout_placement": "before_fc",
        "model.dropout_rate": 0.3, "preprocess.augment": "digits", "preprocess.augment_strength": 0.5}
    assert plain["model.batch_norm"] is False and plain["preprocess.augment"] == "none"
    rgb = default_trials(resolve_space(RunConfig(), "image", (3, 32, 32)), RunConfig(), "image")[2]
    assert rgb["preprocess.augment"] == "natural"
    fixed = apply_overrides(RunConfig(), {"search.space": {"preprocess.augment": "light", "model.family": "cnn"}})
    fixed_params = resolve_space(fixed, "image", (1, 28, 28))
    (_, kept) = default_trials(fixed_params, fixed, "image")
    assert kept["model.batch_norm"] is True and "preprocess.augment" not in kept  # the space's "light" stays
    assert {p.key: p.value for p in fixed_params if p.kind == "fixed"}["preprocess.augment"] == "light"
    only_rnn = resolve_space(apply_overrides(RunConfig(), {"search.space": {"model.family": "rnn"}}), "signal", (1, 64))
    (rnn,) = default_trials(only_rnn, RunConfig(), "signal")
    assert rnn["model.rnn_units"] == d.model.rnn_units and rnn["model.cell"] == d.model.cell
    assert mlp["model.units"] == d.model.units and mlp["model.hidden_layers"] == d.model.hidden_layers
    assert cnn["model.filters"] == d.model.filters and cnn["model.kernel_size"] == d.model.kernel_size
    assert cnn["model.dropout_placement"] == "none" and "model.dropout_rate" not in cnn
    assert "model.filters" not in mlp  # inactive for the MLP
    for values in (mlp, cnn):
        assert values["train.lr"] == d.train.lr and values["train.schedule.name"] == d.train.schedule.name
        assert values["preprocess.scaler"] == "channel"  # auto, resolved for signals
        assert values["preprocess.augment"] == "none"
        # the values rebuild the default config (trial epochs aside)
        cfg = to_config(RunConfig(), values)
        assert cfg.model == apply_overrides(d, {"model.family": values["model.family"],
                                                "preprocess.scaler": "channel"}).model


def test_default_trials_clamp_into_narrowed_ranges_and_keep_fixed_keys():
    space = {"model.family": "mlp", "train.lr": {"low": 1e-2, "high": 1e-1, "log": True},
             "model.units": {"low": 8, "high": 64}, "model.activation": {"choice": ["gelu", "tanh"]}}
    base = apply_overrides(RunConfig(), {"search.space": space})
    (only,) = default_trials(resolve_space(base, "tabular", (4,)), base, "tabular")
    assert "model.family" not in only  # fixed by the user: not sampled, not enqueued
    assert only["train.lr"] == 1e-2 and only["model.units"] == 64
    assert "model.activation" not in only  # relu is not offered: the sampler picks


def test_structure_and_member_keys():
    values = {"model.family": "cnn", "model.filters": 16, "model.dropout_placement": "after_fc",
              "model.dropout_rate": 0.3, "train.lr": 0.01, "train.weight_decay": 1e-4, "train.batch_size": 64,
              "train.schedule.name": "step", "train.schedule.gamma": 0.5, "preprocess.augment": "light",
              "preprocess.augment_strength": 0.4, "train.early_stopping.patience": 5}
    assert structure_values(values) == {"model.family": "cnn", "model.filters": 16,
                                        "model.dropout_placement": "after_fc", "train.batch_size": 64,
                                        "train.schedule.name": "step", "preprocess.augment": "light"}
    assert is_member_key("train.lr") and not is_member_key("train.optimizer")


def test_default_trials_snap_to_the_step_grid_inside_the_range_and_skip_unset_values():
    space = {"model.family": "mlp", "train.early_stopping.patience": {"low": 3, "high": 10, "step": 4},
             "train.grad_clip": {"low": 0.5, "high": 5.0}}
    base = apply_overrides(RunConfig(), {"search.space": space})  # default patience 10, no gradient clipping
    (only,) = default_trials(resolve_space(base, "tabular", (4,)), base, "tabular")
    assert only["train.early_stopping.patience"] == 7  # 3 + 4k inside [3, 10], nearest to 10
    assert "train.grad_clip" not in only
