"""The commands about one model: ``summary`` (build it and count parameters), ``train``, ``lr-find`` (the LR range
test) and ``augment`` (preview an augmentation pipeline).

Each command parses its flags into a config (:mod:`nntune.cli.flags`), calls the library and shows the result
(:mod:`nntune.cli.render`); the work itself is in :mod:`nntune.training`, :mod:`nntune.models` and
:mod:`nntune.data`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from nntune import atomic
from nntune.cli.flags import config_from, int_list
from nntune.cli.options import (AUGMENT_PRESETS, DATA_OPTIONS, FINETUNE_OPTIONS, JSON_OPTION, LOG_OPTION, MODEL_OPTIONS,
                                TRAIN_OPTIONS, add_options, common)
from nntune.cli.render import (console, emit_json, out_console, print_lr_find, print_model_summary,
                               print_train_summary, write_report)


@click.command("summary")
@common
@add_options(DATA_OPTIONS)
@add_options(MODEL_OPTIONS)
@click.option("--input-shape", help="per-sample input shape, e.g. 1,28,28 (default: the dataset's)")
@click.option("--outputs", type=click.IntRange(min=1), help="number of outputs (default: the dataset's)")
@click.option("--freeze", "freeze_pattern", help="freeze layers whose name matches this glob, e.g. 'block1.*'")
@click.option("--freeze-all-but-last", type=click.IntRange(min=0), help="freeze all weighted layers except the last N")
@JSON_OPTION
def summary_cmd(input_shape: str | None, outputs: int | None, freeze_pattern: str | None,
                freeze_all_but_last: int | None, json_out: str | None, **kwargs: Any) -> None:
    """Build a model and print its layers with trainable / non-trainable parameter counts."""
    from nntune.data.sources import load_configured
    from nntune.models import build_model, freeze, summary

    cfg = config_from(kwargs)
    if input_shape is None or outputs is None:
        ds = load_configured(cfg.data)
        shape = int_list(input_shape, "--input-shape") if input_shape else list(ds.input_shape)
        n_out = outputs or ds.n_outputs
    else:
        shape, n_out = int_list(input_shape, "--input-shape"), outputs
    model = build_model(cfg.model, shape, n_out, seed=cfg.seed)
    if freeze_pattern is not None or freeze_all_but_last is not None:
        freeze(model, freeze_pattern, freeze_all_but_last)
    s = summary(model, shape)
    if json_out != "-":
        print_model_summary(s, cfg.model.family, shape, n_out)
    emit_json(s.to_dict(), json_out)


@click.command("train")
@common
@add_options(DATA_OPTIONS)
@add_options(MODEL_OPTIONS)
@add_options(TRAIN_OPTIONS)
@add_options(FINETUNE_OPTIONS)
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/train"), show_default=True,
              help="run directory: config.yaml, result.json, best/")
@click.option("--quiet", is_flag=True, help="no progress bar")
@LOG_OPTION
@JSON_OPTION
def train_cmd(out: Path, quiet: bool, log: tuple[str, ...], json_out: str | None, **kwargs: Any) -> None:
    """Train one model, evaluate the test split once, and save the run directory."""
    from nntune.training.pipeline import train

    cfg = config_from(kwargs)
    result = train(cfg, out, progress=not quiet and json_out != "-", log=log)
    report = write_report(out, quiet or json_out == "-", result)
    if json_out != "-":
        print_train_summary(result, out)
        out_console.print(f"report: {report}")
    emit_json(result, json_out)


@click.command("lr-find")
@common
@add_options(DATA_OPTIONS)
@add_options(MODEL_OPTIONS)
@add_options(TRAIN_OPTIONS)
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
    from nntune.training.pipeline import prepare_data, range_test

    from nntune.reporting.plots import lr_find_plot, save  # here, not at the top: matplotlib takes a second to load

    cfg = config_from(kwargs)
    data = prepare_data(cfg)
    with console.status("LR range test"):
        result = range_test(cfg, data, start_lr=start_lr, end_lr=end_lr, steps=steps, mode=mode,
                            method=method).to_dict()
    out.mkdir(parents=True, exist_ok=True)
    save(lr_find_plot(result), out / "lr_find.png")
    atomic.write_text(out / "lr_find.json", json.dumps(result, indent=2))
    if json_out != "-":
        print_lr_find(result, method, out / "lr_find.png")
    emit_json(result, json_out)


@click.command("augment")
@common
@add_options(DATA_OPTIONS)
@click.option("--preset", type=click.Choice(AUGMENT_PRESETS), default=None,
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
    from nntune.data.preview import augment_preview

    from nntune.reporting.plots import augment_grid, save  # here, not at the top: matplotlib takes a second to load

    cfg = config_from(kwargs)
    preset = preset or cfg.preprocess.augment
    strength = cfg.preprocess.augment_strength if strength is None else strength
    shown = augment_preview(cfg, preset, strength, samples, copies, shuffle=True)
    save(augment_grid(shown.grid, f"{shown.dataset.name}: preset {preset}, strength {strength}"), out)
    info = {"preset": preset, "strength": strength, "ops": [type(op).__name__ for op in shown.augmenter.ops],
            "grid": str(out), "samples": samples, "copies": copies}
    if json_out != "-":
        out_console.print(f"{preset} (strength {strength}): {', '.join(info['ops']) or 'identity'} -> {out}")
    emit_json(info, json_out)
