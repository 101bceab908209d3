"""Optional logging where users already watch their runs: TensorBoard event files and MLflow runs.

A :class:`Tracker` fans out to the chosen backends. ``train`` logs one run; ``tune`` (and each ``worker``) logs a
parent and one child run per trial (per-epoch scalars, the trial's hyper-parameters, its state and objective) plus
the final fit. Per-epoch values come from a :class:`~nntune.training.callbacks.Callback`, so the single-model trainer
and every member of a population log the same way.

- TensorBoard: ``RUN_DIR/tensorboard/<run>/`` event files written with ``torch.utils.tensorboard``; the hyper-
  parameters go to TensorBoard's HParams view (``tensorboard --logdir RUN_DIR/tensorboard``).
- MLflow: ``MlflowClient`` with explicit run ids (populations train many trials at once, which MLflow's fluent
  "active run" API cannot express) to ``MLFLOW_TRACKING_URI``, else MLflow's own default (``./mlflow.db`` with
  artifacts in ``./mlruns``), in the experiment ``MLFLOW_EXPERIMENT_NAME`` (default ``nntune``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nntune import dotted
from nntune.errors import ConfigError
from nntune.redact import redact
from nntune.registry import TRACKERS
from nntune.training.callbacks import Callback

LOGGERS = TRACKERS  # each is a module to import and the name of its nntune extra
SKIPPED = ("epoch", "grad_norms")


def check_loggers(names: Iterable[str]) -> list[str]:
    """Validate ``--log`` values (comma lists allowed); each must be installed."""
    chosen = [n.strip() for name in names for n in str(name).split(",") if n.strip()]
    for name in chosen:
        if name not in LOGGERS:
            raise ConfigError(f"--log: unknown logger {name!r} (choose from {', '.join(LOGGERS)})")
        try:
            __import__(name)
        except ImportError:
            raise ConfigError(f"--log {name}: not installed; pip install 'nntune[{name}]'") from None
    return list(dict.fromkeys(chosen))


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``; lists and None become strings (both tools want scalars)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in dotted.flatten(config, prefix).items()}


def _scalars(logs: dict) -> dict[str, float]:
    return {k: float(v) for k, v in logs.items()
            if k not in SKIPPED and isinstance(v, (int, float)) and math.isfinite(v)}


class TensorBoardLog:
    """One event-file directory per run under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def start(self, name: str, params: dict[str, Any], main: bool = False) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        return {"writer": SummaryWriter(str(self.root / name)), "params": params}

    def epoch(self, run: Any, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            run["writer"].add_scalar(key, value, step)

    def end(self, run: Any, state: str, metrics: dict[str, float]) -> None:
        from torch.utils.tensorboard.summary import hparams

        writer = run["writer"]
        params = {**run["params"], "state": state}
        exp, ssi, sei = hparams(params, metrics)
        for summary in (exp, ssi, sei):
            writer.file_writer.add_summary(summary)
        for key, value in metrics.items():
            writer.add_scalar(key, value)
        writer.close()

    def summary(self, metrics: dict[str, float]) -> None:
        """The command's outcome as a run of its own (``summary``), beside the trials."""
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(self.root / "summary")) as writer:
            for key, value in metrics.items():
                writer.add_scalar(key, value)

    def artifacts(self, paths: Sequence[Path]) -> None:
        """Event files are the log; nothing to copy."""

    def close(self, state: str) -> None:
        """Each run's writer closes when the run ends."""


class MLflowLog:
    """A parent run (the command) with nested runs (trials, final fit) in one experiment."""

    def __init__(self, name: str, tags: dict[str, str], params: dict[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        for noisy in ("mlflow.store.db.utils", "alembic"):  # table creation chatter on a fresh local store
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self.client = MlflowClient()
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "nntune")
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            try:
                self.experiment_id = self.client.create_experiment(experiment)
            except Exception:  # another worker created it first
                self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        else:
            self.experiment_id = found.experiment_id
        self.parent = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        self._params(self.parent, params)

    def _params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[i:i + 100])

    def start(self, name: str, params: dict[str, Any], main: bool = False) -> str:
        """A nested run, or with ``main`` the parent run itself (``train`` is one run, its params already logged)."""
        if main:
            return self.parent
        run_id = self.client.create_run(self.experiment_id, run_name=name,
                                        tags={"mlflow.parentRunId": self.parent}).info.run_id
        self._params(run_id, params)
        return run_id

    def epoch(self, run: str, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def end(self, run: str, state: str, metrics: dict[str, float]) -> None:
        self.epoch(run, 0, metrics)
        self.client.set_tag(run, "nntune.state", state)
        if run != self.parent:  # the parent ends with close()
            self.client.set_terminated(run, "FAILED" if state == "FAIL" else "FINISHED")

    def summary(self, metrics: dict[str, float]) -> None:
        self.epoch(self.parent, 0, metrics)

    def artifacts(self, paths: Sequence[Path]) -> None:
        for path in paths:
            if path.is_dir():
                self.client.log_artifacts(self.parent, str(path), artifact_path=path.name)
            elif path.is_file():
                self.client.log_artifact(self.parent, str(path))

    def close(self, state: str) -> None:
        self.client.set_terminated(self.parent, "FAILED" if state == "FAIL" else "FINISHED")


class RunLog(Callback):
    """One tracked run (a trial, the final fit, a ``train`` run): logs every epoch's values, then its end."""

    def __init__(self, tracker: Tracker, name: str, params: dict[str, Any], main: bool = False) -> None:
        self.runs = [(b, b.start(name, params, main)) for b in tracker.backends]
        self.ended = False

    def on_epoch_end(self, trainer, epoch: int, logs: dict[str, float]) -> None:
        values = _scalars(logs)
        for backend, run in self.runs:
            backend.epoch(run, epoch, values)

    def end(self, state: str, metrics: dict[str, float]) -> None:
        """Record how the run ended (COMPLETE, PRUNED, FAIL) and its final metrics; once."""
        if self.ended:
            return
        self.ended = True
        values = _scalars(metrics)
        for backend, run in self.runs:
            backend.end(run, state, values)


class Tracker:
    """The chosen loggers of one command (none: every call is a no-op)."""

    def __init__(self, loggers: Sequence[str] = (), out: Path | None = None, name: str = "nntune",
                 config: dict | None = None, command: str = "train") -> None:
        self.loggers = check_loggers(loggers)
        self.backends: list[Any] = []
        self.info: dict[str, Any] = {}
        if "tensorboard" in self.loggers:
            root = Path(out or ".") / "tensorboard"
            self.backends.append(TensorBoardLog(root))
            self.info["tensorboard"] = str(root)
        if "mlflow" in self.loggers:
            tags = {"nntune.command": command, "nntune.out": str(Path(out or ".").resolve())}
            log = MLflowLog(name, tags, flatten(redact(config or {})))
            self.backends.append(log)
            self.info["mlflow"] = {"tracking_uri": log.client.tracking_uri, "experiment_id": log.experiment_id,
                                   "run_id": log.parent}

    def __bool__(self) -> bool:
        return bool(self.backends)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        """Close every backend: the parent run ends FINISHED, or FAILED when the block raised (Ctrl-C included)."""
        self.close("FAIL" if exc_type is not None else "COMPLETE")

    def run(self, name: str, params: dict[str, Any], main: bool = False) -> RunLog | None:
        """A callback logging one run (nested, or with ``main`` the command's own run), or None when nothing is
        tracked."""
        return RunLog(self, name, params, main) if self.backends else None

    def summary(self, metrics: dict[str, float]) -> None:
        """The command's outcome (test metrics, trial counts) on its own run."""
        values = _scalars(metrics)
        for backend in self.backends:
            backend.summary(values)

    def artifacts(self, paths: Sequence[Path]) -> None:
        """Attach files or directories (the model, the report) to the parent run where the backend keeps files."""
        for backend in self.backends:
            backend.artifacts([Path(p) for p in paths])

    def close(self, state: str = "COMPLETE") -> None:
        for backend in self.backends:
            backend.close(state)


def attach_to_run(info: dict, paths: Sequence[Path]) -> None:
    """Attach files to the MLflow parent run a finished command recorded (``result["tracking"]``), e.g. the report
    built after ``tune``."""
    mlflow_info = (info or {}).get("mlflow")
    if not mlflow_info:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_info["tracking_uri"])
    for path in map(Path, paths):
        if path.is_dir():
            client.log_artifacts(mlflow_info["run_id"], str(path), artifact_path=path.name)
        elif path.is_file():
            client.log_artifact(mlflow_info["run_id"], str(path))
