"""The commands that use finished runs and saved models: ``report`` (rebuild a run's report), ``dashboard``
(optuna-dashboard for a study), ``predict`` (a CSV of predictions) and ``export`` (ONNX / TorchScript).

The work is in :mod:`nntune.reporting.report`, :mod:`nntune.predict` and :mod:`nntune.export`; these commands parse
arguments, call them and say what was written.
"""

from __future__ import annotations

# the commands import what they run when they run, so `nntune --help` starts without torch, Optuna or matplotlib

from pathlib import Path

import click

from nntune.cli.options import JSON_OPTION
from nntune.cli.render import console, emit_json, out_console
from nntune.errors import NNTuneError


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@JSON_OPTION
def report_cmd(run_dir: Path, json_out: str | None) -> None:
    """Rebuild RUN_DIR/report.html (self-contained) and RUN_DIR/figures/ from a train or tune run, no retraining."""
    from nntune.reporting.report import build_report

    path = build_report(run_dir)
    figures = sorted(str(p) for p in (run_dir / "figures").glob("*.png"))
    if json_out != "-":
        out_console.print(f"report: {path}  ({len(figures)} figures in {run_dir / 'figures'})")
    emit_json({"report": str(path), "figures": figures}, json_out)


@click.command("dashboard")
@click.argument("run_dir", type=click.Path(path_type=Path), required=False)
@click.option("--storage", help="Optuna storage URL (default: RUN_DIR/study.db)")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="port to listen on")
def dashboard_cmd(run_dir: Path | None, storage: str | None, host: str, port: int) -> None:
    """Serve optuna-dashboard for a study (a run directory's study.db, or --storage URL)."""
    from optuna_dashboard import run_server

    from nntune.storage import make_storage, study_url

    if storage is None:
        if run_dir is None:
            raise NNTuneError("dashboard: give a run directory or --storage URL")
        db = run_dir / "study.db"
        if not db.exists():
            raise NNTuneError(f"{db}: no study database here; pass --storage URL for other storages")
        storage = study_url(None, run_dir)
    out_console.print(f"optuna-dashboard for {storage} on http://{host}:{port}/  (Ctrl-C to stop)")
    run_server(make_storage(storage), host=host, port=port)


@click.command("predict")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", "data_path", type=click.Path(path_type=Path), required=True,
              help="CSV (feature columns by name), NPZ with 'x', or images: one file, a folder (flat or by class) "
                   "or a quoted glob such as 'new/*.png'")
@click.option("--out", type=click.Path(path_type=Path), default=Path("predictions.csv"), show_default=True,
              help="CSV of predictions: row number or image path, label and one probability column per class (or "
                   "the predicted value)")
def predict_cmd(model: Path, data_path: Path, out: Path) -> None:
    """Predict with a saved model (a run's best/ directory, or a file from nntune export) and write a CSV."""
    from nntune.predict import predict_csv

    n = predict_csv(model, data_path, out)
    out_console.print(f"{n} predictions -> {out}")


@click.command("export")
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
    emit_json(info, json_out)
