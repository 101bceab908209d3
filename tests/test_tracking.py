"""TensorBoard and MLflow logging, checked by reading the written logs back (TensorBoard's event reader,
``mlflow.search_runs``) against what the run itself recorded."""

import json
import sys

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from nntune.cli import main
from nntune.errors import ConfigError
from nntune.tracking import check_loggers, flatten


@pytest.fixture
def mlflow_here(tmp_path, monkeypatch):
    """A fresh local MLflow store in the test's directory (artifacts go to ./mlruns there)."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "nntune-test")
    mlflow.set_tracking_uri(uri)
    yield MlflowClient(uri)
    mlflow.set_tracking_uri(None)


def _events(path):
    acc = EventAccumulator(str(path))
    acc.Reload()
    return acc


def _hparams(acc) -> dict:
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    values = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    return {k: v.string_value or v.number_value or v.bool_value for k, v in values.items()}


def _runs():
    return mlflow.search_runs(experiment_names=["nntune-test"], output_format="list")


def test_train_logs_every_epoch_to_both(tmp_path, mlflow_here):
    out = tmp_path / "run"
    main(["train", "--epochs", "3", "--no-early-stopping", "--lr", "0.002", "--quiet", "--out", str(out),
          "--log", "tensorboard", "--log", "mlflow"])
    result = json.loads((out / "result.json").read_text())
    history = result["history"]
    acc = _events(out / "tensorboard" / "train")
    assert [e.step for e in acc.Scalars("val_loss")] == [1, 2, 3]
    assert [e.value for e in acc.Scalars("val_accuracy")] == pytest.approx([h["val_accuracy"] for h in history])
    assert _hparams(acc)["train.lr"] == pytest.approx(0.002)
    (run,) = _runs()
    assert run.info.run_id == result["tracking"]["mlflow"]["run_id"] and run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.002" and run.data.params["model.family"] == "mlp"
    losses = mlflow_here.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in losses] == [1, 2, 3]
    assert [m.value for m in losses] == pytest.approx([h["val_loss"] for h in history])
    assert run.data.metrics["test_accuracy"] == pytest.approx(result["test"]["accuracy"])
    files = {f.path for f in mlflow_here.list_artifacts(run.info.run_id)}
    assert {"best", "report.html", "result.json", "figures"} <= files
    assert {f.path for f in mlflow_here.list_artifacts(run.info.run_id, "best")} >= {"best/weights.safetensors",
                                                                                     "best/model.json"}


def test_tune_logs_one_run_per_trial(tmp_path, mlflow_here):
    out = tmp_path / "run"
    main(["tune", "--trials", "4", "--population", "2", "--trial-epochs", "2", "--epochs", "2", "--finalists", "0",
          "--quiet", "--out", str(out), "--set", "search.space={model.family: mlp}",
          "--log", "tensorboard", "--log", "mlflow"])
    trials = optuna.load_study(study_name="nntune", storage=f"sqlite:///{out / 'study.db'}").trials
    assert len(trials) == 4
    for t in trials:
        acc = _events(out / "tensorboard" / f"trial_{t.number:04d}")
        history = t.user_attrs["history"]
        assert [e.value for e in acc.Scalars("val_loss")] == pytest.approx([h["val_loss"] for h in history])
        hp = _hparams(acc)
        assert hp["state"] == t.state.name and hp["trial"] == t.number
        for key, value in t.params.items():
            assert hp[key] == (pytest.approx(value) if isinstance(value, float) else value)
    runs = {r.info.run_name: r for r in _runs()}
    parent = runs.pop("tune nntune")
    assert parent.info.status == "FINISHED" and "best" in {f.path for f in mlflow_here.list_artifacts(
        parent.info.run_id)}
    final = runs.pop("final")
    assert final.data.metrics["test_accuracy"] == pytest.approx(parent.data.metrics["test_accuracy"])
    assert sorted(runs) == [f"trial_{t.number:04d}" for t in trials]
    for t in trials:
        run = runs[f"trial_{t.number:04d}"]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["nntune.state"] == t.state.name
        assert {k: v for k, v in run.data.params.items() if k != "trial"} == {k: str(v) for k, v in t.params.items()}
        if t.state.name == "COMPLETE":
            assert run.data.metrics["objective"] == pytest.approx(t.value)
        steps = mlflow_here.get_metric_history(run.info.run_id, "val_accuracy")
        assert len(steps) == len(t.user_attrs["history"])


def test_logger_names_and_missing_packages_are_clear_errors(monkeypatch):
    assert check_loggers(["tensorboard,mlflow", "mlflow"]) == ["tensorboard", "mlflow"]
    with pytest.raises(ConfigError, match="unknown logger 'wandb'"):
        check_loggers(["wandb"])
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'nntune\[mlflow\]'"):
        check_loggers(["mlflow"])


def test_flatten_gives_scalars():
    assert flatten({"train": {"lr": 0.1, "schedule": {"name": "cosine"}}, "widths": [4, 2], "path": None}) == {
        "train.lr": 0.1, "train.schedule.name": "cosine", "widths": "[4, 2]", "path": "None"}
