import pytest

from nntune.config import RunConfig, apply_overrides, build_config, load_config, save_config
from nntune.errors import ConfigError
from nntune.registry import MODEL_PRESETS


def test_defaults_roundtrip_yaml(tmp_path):
    cfg = apply_overrides(RunConfig(), ["train.lr=0.01", "model.widths=[64, 32]", "train.schedule.name=step"])
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert again.train.lr == 0.01 and again.model.widths == [64, 32] and again.train.schedule.name == "step"


def test_unknown_key_names_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key 'train.lrr'; valid keys here: epochs, batch_size"):
        load_config(path)


def test_bad_value_names_key():
    with pytest.raises(ConfigError, match=r"train.lr.*-1"):
        build_config({"train": {"lr": -1}})


def test_unknown_override_key():
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        apply_overrides(RunConfig(), ["train.nope=1"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides(RunConfig(), ["train.lr"])


def test_fractions_leave_training_data():
    with pytest.raises(ConfigError, match="at least 10%"):
        build_config({"data": {"val_fraction": 0.5, "test_fraction": 0.45}})


def test_funnel_widths():
    cfg = build_config({"model": {"hidden_layers": 3, "units": 256, "funnel": 0.5}}).model
    assert cfg.hidden_widths() == [256, 128, 64]
    assert build_config({"model": {"filters": 16, "conv_blocks": 3}}).model.block_filters() == [16, 32, 64]


def test_custom_augmentation_needs_its_ops_and_evidence_questions_are_checked():
    with pytest.raises(ConfigError, match="augment: custom needs augment_ops"):
        apply_overrides(RunConfig(), {"preprocess.augment": "custom"})
    cfg = apply_overrides(RunConfig(), {"preprocess.augment": "custom", "preprocess.augment_ops": [{"op": "hflip"}]})
    assert cfg.preprocess.custom_ops() == [{"op": "hflip"}]
    assert apply_overrides(cfg, {"preprocess.augment": "light"}).preprocess.custom_ops() is None  # a preset wins
    with pytest.raises(ConfigError, match="evidence.questions: Value error, unknown question 'colour'"):
        apply_overrides(RunConfig(), {"evidence.questions": ["lr", "colour"]})


def test_a_preset_fills_in_what_the_config_and_overrides_do_not_give(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: tcn\n  filters: 64\n  family: cnn\n  conv_blocks: 3\n")
    cfg = load_config(path)
    assert (cfg.model.preset, cfg.model.filters, cfg.model.conv_blocks) == ("tcn", 64, 3)
    assert cfg.model.dilation_growth == MODEL_PRESETS["tcn"]["dilation_growth"] == 2 and cfg.model.pool == "none"
    # an override of the preset sets its settings first; the other keys of the same call win over them
    over = apply_overrides(cfg, {"model.preset": "resnet", "model.kernel_size": 5})
    assert (over.model.pool, over.model.filters, over.model.kernel_size) == ("max", 32, 5)
    # a saved config reloads to the same model: every key is given, so the preset fills in nothing
    save_config(over, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == over


def test_mistyped_keys_get_a_suggestion_and_yaml_errors_a_line_and_column(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("model:\n  activaton: relu\n")
    with pytest.raises(ConfigError, match=r"unknown key 'model.activaton'; valid keys here: .*; did you mean "
                                          r"'activation'\?"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown key 'activaton'; did you mean 'activation'\?"):
        apply_overrides(RunConfig(), ["model.activaton=relu"])
    with pytest.raises(ConfigError, match=r"unknown section 'modle'; did you mean 'model'\?"):
        apply_overrides(RunConfig(), ["modle.family=cnn"])
    with pytest.raises(ConfigError) as err:  # nothing close: no guess
        apply_overrides(RunConfig(), ["model.zzzzzz=1"])
    assert "did you mean" not in str(err.value)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  family: cnn\n   filters: 3\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML \(line 3, column 11: mapping values"):
        load_config(broken)


def test_what_was_given_survives_overrides_and_loading(tmp_path):
    cfg = apply_overrides(RunConfig(), {"train.epochs": 5})
    assert cfg.is_given("train.epochs") and not cfg.is_given("train.lr")
    cfg = apply_overrides(cfg, ["train.schedule.name=cosine"])
    assert cfg.is_given("train.epochs") and cfg.is_given("train.schedule.name")
    assert not cfg.is_given("train.schedule.gamma") and not cfg.is_given("model.units")
    assert cfg.to_dict() == RunConfig.model_validate(cfg.to_dict()).to_dict()  # the full dump is unchanged
    assigned = RunConfig()
    assigned.train.lr = 0.5  # an assignment to a section's field counts as given, and survives overrides
    assert assigned.is_given("train.lr") and apply_overrides(assigned, {"seed": 3}).train.lr == 0.5
    assert assigned.is_given("train") and not assigned.is_given("model")
    (tmp_path / "run.yaml").write_text("train: {lr: 0.01}\n")
    loaded = load_config(tmp_path / "run.yaml")
    assert loaded.is_given("train.lr") and not loaded.is_given("train.epochs")
