"""The ``nntune`` command. Every subcommand has --help, prints a readable summary and can write JSON.

User errors (:class:`nntune.errors.NNTuneError`) print one line and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nntune import atomic
from nntune.config import (ACTIVATIONS, BUILTIN_DATASETS, EVIDENCE_QUESTIONS, OPTIMIZERS, SCALERS, SCHEDULES,
                           RunConfig, apply_overrides, load_config)
from nntune.errors import NNTuneError
from nntune.redact import redact

console = Console(stderr=True)
out_console = Console()

# (flag, config key, click type, help). One table so every command spells an option the same way.
DATA_OPTIONS = [
    ("--dataset", "data.dataset", click.Choice(list(BUILTIN_DATASETS)), "built-in dataset (default digits)"),
    ("--data", "data.path", click.Path(path_type=Path), "CSV file, NPZ file or image folder"),
    ("--target", "data.target", str, "target column of a CSV file"),
    ("--task", "data.task", click.Choice(["auto", "classification", "regression"]), "override the inferred task"),
    ("--seed", "seed", int, "seed for splits, initialisation and shuffling"),
]
MODEL_OPTIONS = [
    ("--family", "model.family", click.Choice(["mlp", "cnn", "rnn"]), "model family (rnn: signals only)"),
    ("--activation", "model.activation", click.Choice(ACTIVATIONS), "activation function"),
    ("--batch-norm/--no-batch-norm", "model.batch_norm", None, "batch normalization"),
    ("--hidden-layers", "model.hidden_layers", int, "MLP: number of hidden layers"),
    ("--units", "model.units", int, "MLP: width of the first hidden layer"),
    ("--funnel", "model.funnel", float, "MLP: width ratio between consecutive layers (<=1)"),
    ("--widths", "model.widths", str, "MLP: explicit hidden widths, e.g. 256,128"),
    ("--dropout", "model.dropout", float, "MLP: dropout after each hidden layer"),
    ("--conv-blocks", "model.conv_blocks", int, "CNN: number of conv blocks"),
    ("--convs-per-block", "model.convs_per_block", int, "CNN: convolutions per block"),
    ("--filters", "model.filters", int, "CNN: filters of the first block"),
    ("--filter-multiplier", "model.filter_multiplier", float, "CNN: filter growth per block"),
    ("--kernel-size", "model.kernel_size", int, "CNN: kernel size"),
    ("--pool", "model.pool", click.Choice(["max", "avg", "none"]), "CNN: pooling after each block"),
    ("--residual/--no-residual", "model.residual", None, "CNN: residual connections"),
    ("--head", "model.head", click.Choice(["flatten", "gap"]), "CNN: flatten or global average pool"),
    ("--fc-layers", "model.fc_layers", int, "CNN: hidden FC layers"),
    ("--fc-units", "model.fc_units", int, "CNN: units per FC layer"),
    ("--dropout-after-pool", "model.dropout_after_pool", float, "CNN: spatial dropout after pooling"),
    ("--dropout-before-fc", "model.dropout_before_fc", float, "CNN: dropout on the flattened features"),
    ("--dropout-after-fc", "model.dropout_after_fc", float, "CNN, RNN: dropout after each FC layer"),
    ("--cell", "model.cell", click.Choice(["gru", "lstm"]), "RNN: recurrent cell"),
    ("--rnn-layers", "model.rnn_layers", int, "RNN: stacked recurrent layers"),
    ("--rnn-units", "model.rnn_units", int, "RNN: hidden state size per direction"),
    ("--bidirectional/--no-bidirectional", "model.bidirectional", None, "RNN: read the sequence both ways"),
    ("--rnn-dropout", "model.rnn_dropout", float, "RNN: dropout between recurrent layers"),
    ("--frontend-filters", "model.frontend_filters", int, "RNN: a 1-D conv front-end with this many filters"),
    ("--pooling", "model.pooling", click.Choice(["last", "mean", "attention"]), "RNN: how states become features"),
]
TRAIN_OPTIONS = [
    ("--scaler", "preprocess.scaler", click.Choice(SCALERS), "normalization method"),
    ("--augment", "preprocess.augment", click.Choice(["none", "light", "digits", "natural", "signal"]),
     "augmentation preset"),
    ("--augment-strength", "preprocess.augment_strength", float, "augmentation strength in [0, 1]"),
    ("--epochs", "train.epochs", int, "maximum epochs"),
    ("--batch-size", "train.batch_size", int, "batch size"),
    ("--optimizer", "train.optimizer", click.Choice(OPTIMIZERS), "optimizer"),
    ("--lr", "train.lr", str, "initial learning rate, or 'auto' to run the LR range test first"),
    ("--weight-decay", "train.weight_decay", float, "weight decay"),
    ("--grad-clip", "train.grad_clip", float, "clip the gradient norm to this value"),
    ("--label-smoothing", "train.label_smoothing", float, "label smoothing for cross-entropy"),
    ("--schedule", "train.schedule.name", click.Choice(SCHEDULES), "LR schedule"),
    ("--warmup-epochs", "train.schedule.warmup_epochs", int, "linear warmup epochs before the schedule"),
    ("--patience", "train.early_stopping.patience", int, "early-stopping patience in epochs"),
    ("--monitor", "train.early_stopping.monitor", str, "early-stopping monitor (val_loss, val_accuracy, ...)"),
    ("--early-stopping/--no-early-stopping", "train.early_stopping.enabled", None, "early stopping"),
    ("--device", "train.device", str, "auto, cpu, cuda or cuda:N"),
    ("--threads", "train.threads", int, "CPU threads for torch"),
    ("--precision", "train.precision", click.Choice(["auto", "fp32", "bf16", "fp16"]),
     "auto: bf16 autocast + TF32 on GPUs that support it, fp32 on the CPU"),
    ("--compile/--no-compile", "train.compile", None, "torch.compile the training step (CUDA graphs on a GPU)"),
]

FINETUNE_OPTIONS = [
    ("--init-from", "finetune.init_from", click.Path(path_type=Path),
     "start from a saved model (a run's best/): its architecture, weights and scaler; the output layer is replaced "
     "when the task or classes differ"),
    ("--freeze", "finetune.freeze", str, "freeze layers whose name matches this glob, e.g. 'block1.*'"),
    ("--freeze-all-but-last", "finetune.freeze_all_but_last", int,
     "freeze all layer groups (a weighted layer with its batch norm) but the last N"),
    ("--unfreeze-after", "finetune.unfreeze_after", int, "gradual unfreezing: one more group trains every E epochs"),
    ("--lr-mult", "finetune.lr_mult", float, "discriminative LRs: each earlier group gets F x the LR of the next"),
]


def _add_options(table: list[tuple]) -> Callable:
    def decorate(f: Callable) -> Callable:
        for flag, key, kind, help_text in reversed(table):
            name = key.replace(".", "__")
            if kind is None:
                f = click.option(flag, name, default=None, help=help_text)(f)
            else:
                f = click.option(flag, name, type=kind, default=None, help=help_text)(f)
        return f
    return decorate


def _common(f: Callable) -> Callable:
    f = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="override any config key, e.g. --set train.schedule.gamma=0.5 (repeatable)")(f)
    return click.option("--config", "config_file", type=click.Path(path_type=Path),
                        help="YAML run config; flags override it")(f)


def _config_from(kwargs: dict[str, Any]) -> RunConfig:
    """The config file (or defaults), then option flags, then --set overrides."""
    config_file = kwargs.pop("config_file", None)
    overrides = list(kwargs.pop("overrides", ()) or ())
    cfg = load_config(config_file) if config_file else RunConfig()
    flags: dict[str, Any] = {}
    for name, value in list(kwargs.items()):
        if "__" in name or name == "seed":
            kwargs.pop(name)
            if value is None:
                continue
            key = name.replace("__", ".")
            if key == "model.widths":
                value = _int_list(value, "--widths")
            if key == "train.lr":
                if value == "auto":
                    flags["train.lr_auto"] = True
                    continue
                value = _float(value, "--lr")
            if key == "data.path":
                flags["data.dataset"] = None
                value = str(value)
            if key == "finetune.init_from":
                value = str(value)
            flags[key] = value
    cfg = apply_overrides(cfg, flags, labels=flag_names()) if flags else cfg
    return apply_overrides(cfg, overrides) if overrides else cfg


def flag_names() -> dict[str, str]:
    """Config key -> the CLI flag that sets it (``train.lr`` -> ``--lr``), for errors that name what the user typed."""
    tables = (DATA_OPTIONS, MODEL_OPTIONS, TRAIN_OPTIONS, FINETUNE_OPTIONS, SEARCH_OPTIONS, EVIDENCE_OPTIONS)
    return {key: f"{flag.split('/')[0]} ({key})" for table in tables for flag, key, _, _ in table}


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise NNTuneError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def _float(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise NNTuneError(f"{flag}: expected a number or 'auto', got {text!r}") from None


def _emit_json(payload: dict, json_out: str | None) -> None:
    """``--json -`` prints JSON to stdout; ``--json FILE`` writes it there."""
    if json_out is None:
        return
    text = json.dumps(redact(payload), indent=2)
    if json_out == "-":
        click.echo(text)
    else:
        atomic.write_text(json_out, text)


LOG_OPTION = click.option("--log", "log", multiple=True, type=click.Choice(["tensorboard", "mlflow"]),
                          help="also log to TensorBoard (RUN_DIR/tensorboard) or MLflow (MLFLOW_TRACKING_URI, "
                          "default ./mlflow.db); repeat for both")
JSON_OPTION = click.option("--json", "json_out", is_flag=False, flag_value="-", default=None, metavar="[FILE]",
                           help="write machine-readable JSON to FILE, or to stdout when given without a value")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="show tracebacks instead of one-line errors")
@click.version_option(package_name="nntune")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """nntune: tune and train neural networks for your own data, by measurement."""
    ctx.obj = {"debug": debug}


@cli.command("summary")
@_common
@_add_options(DATA_OPTIONS)
@_add_options(MODEL_OPTIONS)
@click.option("--input-shape", help="per-sample input shape, e.g. 1,28,28 (default: the dataset's)")
@click.option("--outputs", type=click.IntRange(min=1), help="number of outputs (default: the dataset's)")
@click.option("--freeze", "freeze_pattern", help="freeze layers whose name matches this glob, e.g. 'block1.*'")
@click.option("--freeze-all-but-last", type=click.IntRange(min=0), help="freeze all weighted layers except the last N")
@JSON_OPTION
def summary_cmd(input_shape: str | None, outputs: int | None, freeze_pattern: str | None,
                freeze_all_but_last: int | None, json_out: str | None, **kwargs: Any) -> None:
    """Build a model and print its layers with trainable / non-trainable parameter counts."""
    from nntune.models import build_model, freeze, summary
    from nntune.data.sources import load_configured

    cfg = _config_from(kwargs)
    if input_shape is None or outputs is None:
        ds = load_configured(cfg.data)
        shape = _int_list(input_shape, "--input-shape") if input_shape else list(ds.input_shape)
        n_out = outputs or ds.n_outputs
    else:
        shape, n_out = _int_list(input_shape, "--input-shape"), outputs
    model = build_model(cfg.model, shape, n_out, seed=cfg.seed)
    if freeze_pattern is not None or freeze_all_but_last is not None:
        freeze(model, freeze_pattern, freeze_all_but_last)
    s = summary(model, shape)
    if json_out == "-":
        _emit_json(s.to_dict(), json_out)
        return
    table = Table(title=f"{cfg.model.family.upper()} for input {tuple(shape)} -> {n_out} outputs")
    for col, justify in (("layer", "left"), ("type", "left"), ("output", "left"),
                         ("trainable", "right"), ("non-trainable", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    for r in s.layers:
        shape = "x".join(str(d) for d in r.output_shape[1:])
        table.add_row(r.name, r.type, shape, f"{r.trainable:,}", f"{r.non_trainable:,}")
    out_console.print(table)
    out_console.print(f"total {s.total:,}  trainable {s.trainable:,}  non-trainable {s.non_trainable:,}  "
                      f"parameters {s.param_mb:.3f} MB  activations/sample {s.activation_mb:.3f} MB")
    _emit_json(s.to_dict(), json_out)


@cli.command("train")
@_common
@_add_options(DATA_OPTIONS)
@_add_options(MODEL_OPTIONS)
@_add_options(TRAIN_OPTIONS)
@_add_options(FINETUNE_OPTIONS)
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/train"), show_default=True,
              help="run directory: config.yaml, result.json, best/")
@click.option("--quiet", is_flag=True, help="no progress bar")
@LOG_OPTION
@JSON_OPTION
def train_cmd(out: Path, quiet: bool, log: tuple[str, ...], json_out: str | None, **kwargs: Any) -> None:
    """Train one model, evaluate the test split once, and save the run directory."""
    from nntune.training.pipeline import train

    cfg = _config_from(kwargs)
    result = train(cfg, out, progress=not quiet and json_out != "-", log=log)
    report = _build_report(out, quiet or json_out == "-", result)
    if json_out != "-":
        _print_train_summary(result, out)
        out_console.print(f"report: {report}")
    _emit_json(result, json_out)


@cli.command("lr-find")
@_common
@_add_options(DATA_OPTIONS)
@_add_options(MODEL_OPTIONS)
@_add_options(TRAIN_OPTIONS)
@click.option("--start-lr", type=click.FloatRange(min=0, min_open=True), default=1e-7, show_default=True,
              help="first learning rate")
@click.option("--end-lr", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="last learning rate")
@click.option("--steps", type=click.IntRange(min=10), default=100, show_default=True, help="mini-batches in the test")
@click.option("--mode", type=click.Choice(["exp", "linear"]), default="exp", show_default=True, help="LR growth")
@click.option("--method", type=click.Choice(["steepest", "valley", "min_div_10"]), default="steepest",
              show_default=True, help="which suggestion to choose")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/lr_find"), show_default=True,
              help="directory for lr_find.png and lr_find.json")
@JSON_OPTION
def lr_find_cmd(start_lr: float, end_lr: float, steps: int, mode: str, method: str, out: Path,
                json_out: str | None, **kwargs: Any) -> None:
    """Run the LR range test and suggest an initial learning rate (plot: OUT/lr_find.png)."""
    from nntune.reporting.plots import lr_find_plot, save
    from nntune.training.pipeline import prepare_data, range_test

    cfg = _config_from(kwargs)
    data = prepare_data(cfg)
    with console.status("LR range test"):
        result = range_test(cfg, data, start_lr=start_lr, end_lr=end_lr, steps=steps, mode=mode,
                            method=method).to_dict()
    out.mkdir(parents=True, exist_ok=True)
    save(lr_find_plot(result), out / "lr_find.png")
    atomic.write_text(out / "lr_find.json", json.dumps(result, indent=2))
    if json_out == "-":
        _emit_json(result, json_out)
        return
    table = Table(title="LR range test", show_header=False)
    for name, lr in result["suggestions"].items():
        table.add_row(name + (" (chosen)" if name == method else ""), f"{lr:.3g}")
    out_console.print(table)
    for w in result["warnings"]:
        out_console.print(f"[yellow]warning[/] {w}")
    out_console.print(f"suggested lr: {result['suggestion']:.3g}   plot: {out / 'lr_find.png'}")
    _emit_json(result, json_out)


@cli.command("augment")
@_common
@_add_options(DATA_OPTIONS)
@click.option("--preset", type=click.Choice(["none", "light", "digits", "natural", "signal"]), default=None,
              help="augmentation preset (default: the config's preprocess.augment)")
@click.option("--strength", type=click.FloatRange(0, 1), default=None, help="0..1, scales every magnitude")
@click.option("--samples", type=click.IntRange(1, 64), default=6, show_default=True, help="rows in the grid")
@click.option("--copies", type=click.IntRange(1, 64), default=7, show_default=True, help="augmented copies per sample")
@click.option("--out", type=click.Path(path_type=Path), default=Path("augment.png"), show_default=True,
              help="PNG file for the preview grid")
@JSON_OPTION
def augment_cmd(preset: str | None, strength: float | None, samples: int, copies: int, out: Path,
                json_out: str | None, **kwargs: Any) -> None:
    """Preview an augmentation pipeline: a grid of originals and augmented copies."""
    import torch

    from nntune.data.augment import build_augmenter, preview_grid
    from nntune.reporting.plots import augment_grid, save
    from nntune.data.sources import load_configured
    from nntune.data.splits import split_dataset

    cfg = _config_from(kwargs)
    preset = preset or cfg.preprocess.augment
    strength = cfg.preprocess.augment_strength if strength is None else strength
    ds = load_configured(cfg.data)
    train_x = ds.x[split_dataset(ds, cfg.data.val_fraction, cfg.data.test_fraction, cfg.seed).train]
    augmenter = build_augmenter(preset, strength, ds.input_shape, train_x,
                                cfg.preprocess.custom_ops() if preset == "custom" else None)
    gen = torch.Generator().manual_seed(cfg.seed)
    picks = torch.randperm(len(train_x), generator=gen)[:samples]
    grid = preview_grid(train_x[picks], augmenter, copies, seed=cfg.seed)
    save(augment_grid(grid, f"{ds.name}: preset {preset}, strength {strength}"), out)
    info = {"preset": preset, "strength": strength, "ops": [type(op).__name__ for op in augmenter.ops],
            "grid": str(out), "samples": samples, "copies": copies}
    if json_out != "-":
        out_console.print(f"{preset} (strength {strength}): {', '.join(info['ops']) or 'identity'} -> {out}")
    _emit_json(info, json_out)


SEARCH_OPTIONS = [
    ("--trials", "search.trials", int, "finished trials the study should reach (a resumed study counts its own); "
     "alone: no time cap; with --timeout: whichever comes first; with neither: 20"),
    ("--timeout", "search.timeout", str, "time budget of the whole command, e.g. 600, 90s, 10m, 1h; alone: no trial "
     "cap"),
    ("--population", "search.population", int, "trials trained at once per structure (default: measured; 1 = one "
     "at a time)"),
    ("--finalists", "search.finalists", int, "top configs re-run with extra seeds before choosing (0 = off)"),
    ("--finalist-seeds", "search.finalist_seeds", int, "seeds per finalist, the trial's own included"),
    ("--sampler", "search.sampler", click.Choice(["tpe", "random", "grid", "gp", "cmaes", "nsga2"]),
     "Optuna sampler (tpe and nsga2 also do multi-objective searches)"),
    ("--pruner", "search.pruner", click.Choice(["median", "asha", "hyperband", "none"]), "Optuna pruner"),
    ("--storage", "search.storage", str, "Optuna storage URL (default sqlite:///OUT/study.db), e.g. postgresql://..."),
    ("--study-name", "search.study_name", str, "study name inside the storage"),
    ("--trial-epochs", "search.epochs", int, "maximum epochs per trial (default: from the data size)"),
    ("--final", "search.final", click.Choice(["retrain", "best_trial"]),
     "retrain the best config on train+val, or keep the best trial's weights"),
    ("--ensemble", "search.ensemble", int, "also report the test metric of the top-K trials' averaged predictions"),
    ("--objectives", "search.objectives", str, "accuracy (or loss) alone, or with params and/or latency, e.g. "
     "accuracy,params: a multi-objective search with a Pareto front (no pruning)"),
    ("--max-params", "search.max_params", int, "prune, before training, any trial whose model has more parameters"),
    ("--max-latency-ms", "search.max_latency_ms", float, "prune any trial slower than this per sample at batch 1 on "
     "the training device"),
    ("--warm-start", "search.warm_start", str, "start a new study with an earlier one's best configurations: its "
     "tune run directory, or a storage URL#study-name"),
    ("--warm-start-top", "search.warm_start_top", int, "how many of the earlier best to enqueue (default 5)"),
]


EVIDENCE_OPTIONS = [
    ("--seeds", "evidence.seeds", int, "seeds per variant, the same for every variant (default 3)"),
    ("--evidence-budget", "evidence.budget", str, "time budget of the evidence, e.g. 300, 5m, 1h (default 10m); "
     "variants run most informative first, the rest are reported as skipped"),
    ("--questions", "evidence.questions", str, "comma-separated questions to answer (default all): "
     + ",".join(EVIDENCE_QUESTIONS)),
]


def _evidence_flags(kwargs: dict[str, Any]) -> dict[str, Any]:
    """--evidence-budget and --questions as config values (a duration, a list)."""
    from nntune.search.study import parse_duration

    flags = {}
    budget = kwargs.pop("evidence__budget", None)
    if budget is not None:
        flags["evidence.budget"] = parse_duration(budget, "--evidence-budget")
    questions = kwargs.pop("evidence__questions", None)
    if questions is not None:
        flags["evidence.questions"] = [q.strip() for q in questions.split(",") if q.strip()]
    return flags


def _search_config(kwargs: dict[str, Any]) -> RunConfig:
    from nntune.search.study import parse_duration

    space_file = kwargs.pop("space_file", None)
    timeout = kwargs.pop("search__timeout", None)
    evidence = _evidence_flags(kwargs)
    cfg = _config_from(kwargs)
    if evidence:
        cfg = apply_overrides(cfg, evidence, labels=flag_names())
    if timeout is not None:
        cfg = apply_overrides(cfg, {"search.timeout": parse_duration(timeout)}, labels=flag_names())
    if space_file is not None:
        import yaml

        try:
            space = yaml.safe_load(Path(space_file).read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise NNTuneError(f"{space_file}: cannot read the search space ({err.__class__.__name__})") from None
        if not isinstance(space, dict):
            raise NNTuneError(f"{space_file}: a search space must be a mapping of config keys")
        cfg = apply_overrides(cfg, {"search.space": {**(cfg.search.space or {}), **space}})
    return cfg


SPACE_OPTION = click.option("--space", "space_file", type=click.Path(path_type=Path),
                            help="YAML search space overriding the default (see nntune.search.space)")


@cli.command("tune")
@_common
@_add_options(DATA_OPTIONS)
@_add_options(SEARCH_OPTIONS)
@_add_options(TRAIN_OPTIONS)
@_add_options(FINETUNE_OPTIONS)
@_add_options(EVIDENCE_OPTIONS)
@SPACE_OPTION
@click.option("--evidence", is_flag=True, help="after the final fit, measure each question's alternatives around the "
              "chosen configuration (as nntune explain does)")
@click.option("--resume", is_flag=True, help="continue the study of the same name; finished trials are kept")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/tune"), show_default=True,
              help="run directory: study.db, trials.csv, trials/, best/, result.json")
@click.option("--quiet", is_flag=True, help="no live table")
@LOG_OPTION
@JSON_OPTION
def tune_cmd(evidence: bool, resume: bool, out: Path, quiet: bool, log: tuple[str, ...], json_out: str | None,
             **kwargs: Any) -> None:
    """Search architecture and training settings with Optuna, then fit and test the best model."""
    started = STARTED  # --timeout covers the whole command: start-up, imports and the report included
    from nntune.artifacts import write_result
    from nntune.evidence.explain import explain
    from nntune.search.budget import with_report
    from nntune.search.study import tune

    cfg = _search_config(kwargs)
    result = tune(cfg, out, resume=resume, progress=not quiet, log=log, started=started)
    if evidence:  # the evidence has its own budget (--evidence-budget)
        result["evidence"] = explain(out, progress=not quiet)
    reporting = time.monotonic()
    report = _build_report(out, quiet or json_out == "-", result)
    result["budget"] = with_report(result["budget"], time.monotonic() - reporting)
    result["seconds"] = result["budget"]["seconds"]
    write_result(out, result)
    if json_out != "-":
        _print_tune_summary(result, out)
        if evidence:
            _print_evidence(result["evidence"])
        out_console.print(f"report: {report}")
    _emit_json(result, json_out)


@cli.command("explain")
@click.argument("run_dir", type=click.Path(path_type=Path))
@_add_options(EVIDENCE_OPTIONS)
@click.option("--quiet", is_flag=True, help="no progress bar")
@JSON_OPTION
def explain_cmd(run_dir: Path, quiet: bool, json_out: str | None, **kwargs: Any) -> None:
    """Answer the ten questions for a finished tune or train run by measurement: train controlled variants of the
    chosen configuration (one change each) with several seeds and report each effect with its 95 % CI.

    The evidence goes into RUN_DIR/result.json (key "evidence") and the rebuilt RUN_DIR/report.html."""
    from nntune.evidence.explain import explain

    flags = _evidence_flags(kwargs)
    seeds = kwargs.pop("evidence__seeds", None)
    if seeds is not None:  # checked here, so that its error names the flag
        apply_overrides(RunConfig(), {"evidence.seeds": seeds}, labels=flag_names())
    evidence = explain(run_dir, seeds=seeds, budget=flags.get("evidence.budget"),
                       questions=flags.get("evidence.questions"), progress=not quiet and json_out != "-")
    report = _build_report(run_dir, quiet or json_out == "-")
    if json_out != "-":
        _print_evidence(evidence)
        out_console.print(f"report: {report}")
    _emit_json(evidence, json_out)


def _print_evidence(evidence: dict) -> None:
    """One row per question: its verdict; then what was run and skipped."""
    setup = evidence["setup"]
    table = Table(title=f"evidence: {setup['metric']} over seeds {', '.join(map(str, setup['seeds']))} "
                        f"({setup['method']})", show_lines=True)
    table.add_column("question", no_wrap=True)
    table.add_column("verdict")
    for key, entry in evidence.items():
        if key != "setup":
            table.add_row(key, entry["verdict"])
    out_console.print(table)
    seeds = len(setup["seeds"])
    out_console.print(f"{setup['runs']} runs ({setup['runs'] // seeds} of {setup['variants'] + 1} configurations × "
                      f"{seeds} seeds) in {setup['seconds']:.0f} s of {setup['budget']:.0f} s; {setup['skipped']} "
                      "skipped"
                      + (" (interrupted)" if setup.get("interrupted") else ""))


def _build_report(out: Path, quiet: bool, result: dict | None = None) -> Path:
    """Write RUN_DIR/report.html; with a ``result`` logged to MLflow, attach the report to its run too."""
    from nntune.reporting.report import build_report
    from nntune.tracking import attach_to_run

    if quiet:
        path = build_report(out)
    else:
        with console.status("writing the report"):
            path = build_report(out)
    attach_to_run((result or {}).get("tracking"), [path, out / "figures"])
    return path


@cli.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@JSON_OPTION
def report_cmd(run_dir: Path, json_out: str | None) -> None:
    """Rebuild RUN_DIR/report.html (self-contained) and RUN_DIR/figures/ from a train or tune run, no retraining."""
    from nntune.reporting.report import build_report

    path = build_report(run_dir)
    figures = sorted(str(p) for p in (run_dir / "figures").glob("*.png"))
    if json_out != "-":
        out_console.print(f"report: {path}  ({len(figures)} figures in {run_dir / 'figures'})")
    _emit_json({"report": str(path), "figures": figures}, json_out)


@cli.command("dashboard")
@click.argument("run_dir", type=click.Path(path_type=Path), required=False)
@click.option("--storage", help="Optuna storage URL (default: RUN_DIR/study.db)")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="port to listen on")
def dashboard_cmd(run_dir: Path | None, storage: str | None, host: str, port: int) -> None:
    """Serve optuna-dashboard for a study (a run directory's study.db, or --storage URL)."""
    from optuna_dashboard import run_server

    from nntune.storage import make_storage

    if storage is None:
        if run_dir is None:
            raise NNTuneError("dashboard: give a run directory or --storage URL")
        db = run_dir / "study.db"
        if not db.exists():
            raise NNTuneError(f"{db}: no study database here; pass --storage URL for other storages")
        storage = f"sqlite:///{db.resolve()}"
    out_console.print(f"optuna-dashboard for {storage} on http://{host}:{port}/  (Ctrl-C to stop)")
    run_server(make_storage(storage), host=host, port=port)


@cli.command("worker")
@_common
@_add_options(DATA_OPTIONS)
@_add_options(SEARCH_OPTIONS)
@_add_options(TRAIN_OPTIONS)
@_add_options(FINETUNE_OPTIONS)
@SPACE_OPTION
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/worker"), show_default=True,
              help="where this worker keeps its trials' weights")
@click.option("--quiet", is_flag=True, help="no live table")
@LOG_OPTION
def worker_cmd(out: Path, quiet: bool, log: tuple[str, ...], **kwargs: Any) -> None:
    """Run trials of a shared study (use the same --config and --storage on every machine)."""
    from nntune.search.budget import Budget, count
    from nntune.search.study import open_study, prepare_search
    from nntune.search.trials import run_trials
    from nntune.tracking import Tracker

    cfg = _search_config(kwargs)
    if not cfg.search.storage:
        raise NNTuneError("--storage: a worker needs the shared study's URL, e.g. postgresql://user@host/db")
    budget = Budget.from_config(cfg.search)
    out.mkdir(parents=True, exist_ok=True)
    search = prepare_search(cfg, out)
    study = open_study(search, resume=True, worker=True)
    with Tracker(log, out, name=f"worker {cfg.search.study_name}", config=cfg.to_dict(),
                 command="worker") as search.tracker:
        run_trials(search, study, budget, progress=not quiet)
    out_console.print(f"worker done ({budget.stopped_by}, {budget.elapsed():.0f} s): the study "
                      f"{study.study_name!r} has {count(study)} finished trials")


def _summary_table(command: str, result: dict) -> tuple[str, Table]:
    """The headline metric for the task and an empty two-column summary table titled for the run."""
    metric = "accuracy" if result["data"]["task"] == "classification" else "r2"
    table = Table(title=f"nntune {command}: {result['data']['name']} ({result['data']['task']})", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    return metric, table


def _print_tune_summary(result: dict, out: Path) -> None:
    metric, table = _summary_table("tune", result)
    n = result["trials"]
    table.add_row("trials (complete / pruned / failed)", f"{n['complete']} / {n['pruned']} / {n['fail']}")
    b = result["budget"]
    used = f"{b['seconds']:.0f} s" + (f" of {b['timeout']:.0f} s, {100 * b['fraction_used']:.0f}%" if b["timeout"]
                                      else "")
    table.add_row("search stopped by", f"{b['stopped_by']}; run took {used}")
    table.add_row("chosen trial", str(result["best_trial"]))
    table.add_row(f"its {result['study']['objective'].replace('_', ' ')}", f"{result['best_value']:.4f}")
    fin = result.get("finalists") or {}
    for row in fin.get("finalists", []):
        spread = f"{row['mean']:.4f} ± {row['std']:.4f}" if row["mean"] is not None else "diverged on a seed"
        mark = " (chosen)" if row["trial"] == fin["chosen"] else ""
        table.add_row(f"finalist trial {row['trial']}{mark}, {len(row['scores'])} seeds", spread)
    table.add_row(f"final model ({result['final']['mode']}, {result['final']['epochs']} epochs) test {metric}",
                  f"{result['test'][metric]:.4f}")
    if result.get("ensemble"):
        e = result["ensemble"]
        table.add_row(f"ensemble of top {e['k']} test {metric}", f"{e['test'][metric]:.4f}")
    table.add_row("seconds", f"{result['seconds']:.1f}")
    out_console.print(table)
    params = Table(title="chosen configuration", show_header=False)
    for k, v in result["best_params"].items():
        params.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    out_console.print(params)
    if result.get("pareto"):
        names = result["study"]["objectives"]
        front = Table(title="Pareto front (nntune train --config CONFIG reproduces a point)")
        for col in ("trial", *names, "config"):
            front.add_column(col)
        for p in result["pareto"]:
            front.add_row(str(p["trial"]), *(f"{int(p['values'][n]):,}" if n == "params" else f"{p['values'][n]:.4g}"
                                             for n in names), p["config"])
        out_console.print(front)
    if result["interrupted"]:
        out_console.print("[yellow]interrupted:[/] the final model uses the trials finished so far")
    out_console.print(f"run directory: {out}  (resume with --resume)")


@cli.command("predict")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", "data_path", type=click.Path(path_type=Path), required=True,
              help="CSV (feature columns by name), NPZ with 'x', or an image folder")
@click.option("--out", type=click.Path(path_type=Path), default=Path("predictions.csv"), show_default=True,
              help="CSV of predictions: label and one probability column per class (or the predicted value)")
def predict_cmd(model: Path, data_path: Path, out: Path) -> None:
    """Predict with a saved model (a run's best/ directory, or a file from nntune export) and write a CSV."""
    import csv

    from nntune import artifacts
    from nntune.data.sources import load_features
    from nntune.export import load_exported

    art = load_exported(model) if model.is_file() else artifacts.load(model)
    x, rows = load_features(data_path, art.data)
    key = "file" if data_path.is_dir() else "row"
    with atomic.replacing(out, "w", newline="") as fh:
        w = csv.writer(fh)
        if art.task == "classification":
            probs = art.predict_proba(x)
            names = art.class_names
            w.writerow([key, "label", *(f"prob_{c}" for c in names)])
            for name, row in zip(rows, probs.tolist()):
                w.writerow([name, names[max(range(len(row)), key=row.__getitem__)], *(f"{p:.6g}" for p in row)])
        else:
            w.writerow([key, "prediction"])
            for name, v in zip(rows, art.predict(x).tolist()):
                w.writerow([name, f"{v:.6g}"])
    out_console.print(f"{len(x)} predictions -> {out}")


@cli.command("export")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True,
              help="ONNX (onnxruntime and most serving stacks) or TorchScript (torch.jit.load, LibTorch)")
@click.option("--out", type=click.Path(path_type=Path),
              help="file to write (default: MODEL_DIR/model.onnx or MODEL_DIR/model.pt)")
@JSON_OPTION
def export_cmd(model_dir: Path, fmt: str, out: Path | None, json_out: str | None) -> None:
    """Export a saved model (a run's best/ directory) that takes raw inputs: the scaler is baked in, the batch
    axis is dynamic, and it returns class probabilities (or values). The file is checked against nntune first."""
    from nntune.export import export

    with console.status(f"exporting to {fmt} and checking the file"):
        info = export(model_dir, fmt, out)
    if json_out != "-":
        out_console.print(f"{fmt} -> {info['path']} ({info['bytes'] / 1024:.0f} KiB); input {info['input']} "
                          f"{tuple(info['input_shape'])} raw, output {info['output']}; agrees with nntune on "
                          f"{info['checked_samples']} samples (max abs diff {info['max_abs_diff']:.2g})")
    _emit_json(info, json_out)


def _print_train_summary(result: dict, out: Path) -> None:
    metric, table = _summary_table("train", result)
    m = result["model"]
    table.add_row("parameters (trainable / non-trainable)", f"{m['trainable']:,} / {m['non_trainable']:,}")
    table.add_row("best epoch / stopped", f"{result['best_epoch']} / {result['stopped_epoch'] or '-'}")
    table.add_row("stop reason", result["stop_reason"])
    ft = result.get("finetune")
    if ft:
        head = "replaced" if ft["head_replaced"] else "kept"
        table.add_row("fine-tuned from", f"{ft['init_from']} (output layer {head})")
    table.add_row(f"val {metric}", f"{result['val'].get(metric, float('nan')):.4f}")
    table.add_row(f"test {metric}", f"{result['test'][metric]:.4f}")
    table.add_row("seconds", f"{result['seconds']:.1f}")
    out_console.print(table)
    for f in result["findings"]:
        if f["severity"] == "warning":
            out_console.print(f"[yellow]finding[/] {f['code']}: {f['message']}")
    out_console.print(f"run directory: {out}")


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a command as Ctrl-C does: cleanly, with what finished kept


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    console.print(f"[yellow]warning:[/] {escape(redact(str(message)))}", highlight=False, soft_wrap=True)


def _process_age() -> float:
    """Seconds since this process started (from Linux's /proc; 0 elsewhere): the interpreter's start-up and imports
    count in ``--timeout`` too."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))  # field 22: the start time
    except (OSError, ValueError, IndexError):
        return 0.0


STARTED = time.monotonic()  # when this command began (main() sets it; a monotonic clock reading)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one-line errors with exit code 2 unless --debug; SIGTERM (``docker stop``,
    Slurm, ``timeout``) is handled like Ctrl-C; warnings are one line each."""
    global STARTED
    # the console script and `python -m nntune` own their process, so its start-up counts; a call from Python
    # (argv given) starts now
    STARTED = time.monotonic() - (_process_age() if argv is None else 0.0)
    args = sys.argv[1:] if argv is None else argv
    terminate = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    if terminate:
        signal.signal(signal.SIGTERM, _terminate)
    shown = warnings.showwarning
    if "--debug" not in args:
        warnings.showwarning = _show_warning
    try:
        _run(args)
    finally:
        warnings.showwarning = shown
        if terminate:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run(args: list[str]) -> None:
    try:
        cli.main(args=args, prog_name="nntune", standalone_mode=False)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except NNTuneError as err:
        if "--debug" in args:
            raise
        console.print(f"[red]error:[/] {escape(redact(str(err)))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except OSError as err:  # a full disk, a permission, a path that is a file: the file and the reason
        if "--debug" in args:
            raise
        where = f"{err.filename}: " if err.filename else ""
        console.print(f"[red]error:[/] {escape(where + (err.strerror or str(err)))}", highlight=False, soft_wrap=True)
        sys.exit(2)
