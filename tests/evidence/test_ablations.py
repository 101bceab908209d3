from nntune.config import RunConfig, apply_overrides
from nntune.evidence import ablations
from nntune.evidence.ablations import build, chosen_names, schedule_defaults, variants


def names(vs):
    return [v.name for v in vs]


def test_mlp_variants_change_one_thing_each():
    cfg = apply_overrides(RunConfig(), {"model.dropout": 0.2, "train.lr": 0.003, "train.epochs": 20})
    made = variants(cfg, "tabular", lr_suggestion=0.01)
    assert names(made["dropout"]) == ["no dropout", "rate ×½ (0.10)", "rate ×2 (0.40)"]
    assert names(made["depth"]) == ["1 hidden layer", "3 hidden layers"]
    assert made["width"][0].overrides == {"model.widths": [128, 128]}
    assert [v.overrides["train.lr"] for v in made["lr"]] == [0.001, 0.009000000000000001, 0.01]
    assert "relu" not in names(made["activation"]) and len(made["activation"]) == 5
    assert names(made["normalization"]) == ["none", "minmax", "robust", "unit"]  # zscore is chosen for tables
    assert made["augmentation"].startswith("Not applicable")
    valid, skipped = build(cfg, made["depth"])
    assert not skipped and [v.config.model.hidden_widths() for v in valid] == [[256], [256, 256, 256]]
    # every variant differs from the chosen configuration in its own keys only
    base = cfg.to_dict()
    for v in build(cfg, made["width"])[0]:
        changed = {k for k in base["model"] if v.config.to_dict()["model"][k] != base["model"][k]}
        assert changed == {"widths"}


def test_cnn_dropout_placements_and_rates():
    cfg = apply_overrides(RunConfig(), {"model.family": "cnn", "model.dropout_after_fc": 0.3})
    made = variants(cfg, "image")
    valid, _ = build(cfg, made["dropout"])
    got = names(valid)
    # 8 placements (the chosen after_fc dropped) and the rate at ×½ and ×2
    assert len(got) == 7 + 2 and "after_fc 0.30" not in got
    assert {"no dropout", "after_pool 0.30", "before_fc 0.30", "after_pool+before_fc+after_fc 0.30"} <= set(got)
    half = next(v for v in valid if v.name.startswith("rate ×½"))
    assert (half.config.model.dropout_after_fc, half.config.model.dropout_after_pool) == (0.15, 0.0)
    assert chosen_names(cfg, "image")["dropout"] == "after_fc 0.30"
    assert names(made["depth"]) == ["1 conv block", "3 conv blocks", "MLP (nntune's default architecture)"]
    family = build(cfg, made["depth"])[0][-1].config  # family against family: the other family's defaults
    assert family.model.family == "mlp" and family.train == cfg.train


def test_augmentation_leaves_each_op_out():
    cfg = apply_overrides(RunConfig(), {"preprocess.augment": "digits", "preprocess.augment_strength": 0.7})
    made = variants(cfg, "image")
    assert names(made["augmentation"]) == ["none", "without affine", "without erasing"]
    valid, _ = build(cfg, made["augmentation"])
    without_affine = valid[1].config.preprocess
    assert without_affine.augment == "custom" and [o["op"] for o in without_affine.augment_ops] == ["erasing"]
    assert without_affine.augment_strength == 0.7
    plain = variants(RunConfig(), "signal")["augmentation"]
    assert names(plain) == ["light at 0.50", "signal at 0.50"]


def test_schedules_at_defaults_with_and_without_warmup():
    cfg = apply_overrides(RunConfig(), {"train.epochs": 40})
    made = variants(cfg, "image")["schedule"]
    assert made[0].name == "cosine + 3 warmup" and made[0].overrides == {"train.schedule.warmup_epochs": 3}
    valid, skipped = build(cfg, made)
    assert not skipped and len(valid) == 1 + 9 + 8  # toggled warmup, 9 other kinds, 8 of them with warmup
    step = next(v for v in valid if v.name == "step").config.train.schedule
    assert (step.step_size, step.warmup_epochs) == (10, 0)
    assert schedule_defaults("multistep", 40, 2)["milestones"] == [20, 30]


def test_duplicates_and_invalid_variants():
    cfg = RunConfig()
    dup = [ablations.Variant("lr", "same", {"train.lr": cfg.train.lr}, 0),
           ablations.Variant("lr", "a", {"train.lr": 0.5}, 1), ablations.Variant("lr", "b", {"train.lr": 0.5}, 2),
           ablations.Variant("lr", "bad", {"train.lr": -1.0}, 3)]
    valid, skipped = build(cfg, dup)
    assert names(valid) == ["a"] and skipped[0]["name"] == "bad" and "train.lr" in skipped[0]["reason"]


def test_order_takes_each_questions_first_variant_before_any_second():
    cfg = apply_overrides(RunConfig(), {"model.dropout": 0.2})
    made = variants(cfg, "tabular")
    valid = {q: build(cfg, made[q])[0] for q in ("lr", "dropout", "schedule")}
    valid["dropout"] = valid["dropout"][1:]  # its first variant dropped: the next one moves up
    ranked = ablations.order(valid, ("dropout", "lr", "schedule"))
    assert [(v.question, v.name) for v in ranked[:4]] == [
        ("dropout", "rate ×½ (0.10)"), ("lr", "lr ×⅓ (0.000333)"), ("schedule", "cosine + 3 warmup"),
        ("dropout", "rate ×2 (0.40)")]
    assert len(ranked) == sum(len(v) for v in valid.values())


def test_recurrent_variants_change_layers_units_and_dropout():
    cfg = apply_overrides(RunConfig(), {"model.family": "rnn", "model.rnn_layers": 2, "model.rnn_units": 32,
                                        "model.bidirectional": True})
    made = variants(cfg, "signal")
    assert names(made["depth"]) == ["1 recurrent layer", "3 recurrent layers", "one direction",
                                    "MLP (nntune's default architecture)", "CNN (nntune's default architecture)"]
    assert [v.overrides for v in made["width"]] == [{"model.rnn_units": 16}, {"model.rnn_units": 64}]
    assert names(made["dropout"]) == ["no dropout", "between recurrent layers 0.20", "between recurrent layers 0.40",
                                      "after FC 0.30"]
    chosen = chosen_names(cfg, "signal")
    assert chosen["depth"] == "2 recurrent layers" and chosen["width"] == "32 units"
    valid, skipped = build(cfg, made["depth"] + made["width"])
    assert len(valid) == 7 and not skipped


def test_a_fine_tuned_model_varies_what_trains_not_its_architecture():
    cfg = apply_overrides(RunConfig(), {"finetune.init_from": "saved", "finetune.freeze_all_but_last": 2})
    made = variants(cfg, "image")
    assert names(made["trainable"])[:3] == ["every layer trains", "the head alone trains", "the last 3 groups train"]
    assert all(made[q].startswith("Not testable here") for q in ("depth", "width", "dropout", "activation",
                                                                   "normalization"))


def test_a_single_recurrent_layer_has_no_dropout_between_layers():
    cfg = apply_overrides(RunConfig(), {"model.family": "rnn", "model.rnn_dropout": 0.3})  # one layer: inert
    assert chosen_names(cfg, "signal")["dropout"] == "no dropout"
    made = variants(cfg, "signal")
    assert "model.rnn_dropout" not in made["dropout"][0].overrides
    two = next(v for v in made["depth"] if v.name == "2 recurrent layers")
    assert two.overrides == {"model.rnn_layers": 2, "model.rnn_dropout": 0.0}  # depth alone, no dropout switched on
