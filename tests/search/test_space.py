import optuna
import pytest

from nntune.config import RunConfig
from nntune.errors import ConfigError
from nntune.search.space import default_space, parse_space, resolve_space, sample, to_config


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


def test_tabular_space_has_no_cnn_keys_and_cnn_depth_fits_the_image():
    assert "model.filters" not in default_space("tabular", (5,))
    assert default_space("image", (1, 8, 8))["model.conv_blocks"]["high"] == 3
    assert default_space("image", (1, 2, 2))["model.conv_blocks"] == 1


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
