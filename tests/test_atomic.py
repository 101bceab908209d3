"""Crash safety of every write: a writer killed at random moments never leaves a file or a model that fails to load."""

import multiprocessing
import os
import random
import signal
import time

from nntune import artifacts, atomic
from nntune.config import RunConfig, apply_overrides
from nntune.data.scalers import Scaler
from nntune.models.builders import build_model

SHAPE, OUTPUTS = (64,), 10


def _model(units: int):
    cfg = apply_overrides(RunConfig(), {"model.units": units, "model.hidden_layers": 2})
    scaler = Scaler("zscore")
    import torch

    scaler.fit(torch.randn(20, *SHAPE))
    return build_model(cfg.model, SHAPE, OUTPUTS), cfg, scaler


def _writer(directory: str) -> None:
    """Save artifacts of alternating sizes and rewrite result.json and a report, as fast as possible, forever (on
    one thread: a forked child must not enter the OpenMP pool its parent used)."""
    import torch

    torch.set_num_threads(1)
    data = {"name": "x", "task": "classification", "kind": "tabular", "input_shape": list(SHAPE),
            "class_names": [str(i) for i in range(OUTPUTS)], "feature_names": []}
    versions = [_model(units) for units in (64, 512)]
    i = 0
    while True:
        model, cfg, scaler = versions[i % 2]
        artifacts.save(os.path.join(directory, "best"), model, cfg, scaler, data)
        artifacts.write_result(directory, {"version": i, "padding": "x" * 200_000})
        atomic.write_text(os.path.join(directory, "report.html"), f"<html>{i}</html>" + " " * 500_000)
        i += 1


def test_a_writer_killed_twenty_times_always_leaves_the_previous_or_the_new_version(tmp_path):
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(0)
    # a first complete version, so that there is always a previous one
    first = ctx.Process(target=_writer, args=(str(tmp_path),))
    first.start()
    deadline = time.monotonic() + 60
    while not (tmp_path / "best" / "model.json").exists() or not (tmp_path / "report.html").exists():
        assert time.monotonic() < deadline, "the writer never finished a first version"
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.join()
    seen = set()
    for _ in range(20):
        proc = ctx.Process(target=_writer, args=(str(tmp_path),))
        proc.start()
        time.sleep(rng.uniform(0.0, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        art = artifacts.load(tmp_path / "best")  # loads: weights, scaler and model.json of one version
        seen.add(art.config.model.units)
        assert artifacts.read_result(tmp_path)["padding"] == "x" * 200_000
        assert (tmp_path / "report.html").read_text().startswith("<html>")
    assert seen == {64, 512}, "the kills should land at different points of the cycle"
    # the next complete writes clean up what the killed writers left behind
    model, cfg, scaler = _model(64)
    artifacts.save(tmp_path / "best", model, cfg, scaler, artifacts.load(tmp_path / "best").data)
    artifacts.write_result(tmp_path, {"version": "final"})
    atomic.write_text(tmp_path / "report.html", "<html>final</html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "report.html", "result.json"]
