"""Memory stays flat over a long search: models, optimizers, tensors and figures are released between trials."""

import gc

import torch

from nntune.config import RunConfig, apply_overrides
from nntune.search import trials
from nntune.search.study import tune


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        kb = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    return kb / 1024


def test_fifty_varied_trials_in_one_process_keep_memory_flat(tmp_path, monkeypatch):
    readings: list[float] = []
    trained: list[int] = []  # trials per call (the defaults train in one call, every other trial alone)
    gpu: list[int] = []  # bytes allocated on the GPU after each trial, where there is one
    train = trials.train_population

    def measured(*args, **kwargs):
        states = train(*args, **kwargs)
        trained.append(len(states))
        gc.collect()
        readings.append(rss_mb())
        if torch.cuda.is_available():
            gpu.append(torch.cuda.memory_allocated())
        return states

    monkeypatch.setattr(trials, "train_population", measured)
    space = {"model.family": {"choice": ["mlp", "cnn"]}, "model.units": {"low": 16, "high": 512, "log": True},
             "model.filters": {"low": 4, "high": 48, "log": True}, "model.conv_blocks": {"low": 1, "high": 2},
             "preprocess.augment": "none", "train.batch_size": 128}
    cfg = apply_overrides(RunConfig(), {"search.trials": 50, "search.epochs": 2, "search.population": 1,
                                        "search.pruner": "none", "search.finalists": 0, "train.epochs": 2,
                                        "search.space": space})
    result = tune(cfg, tmp_path)
    assert result["trials"]["complete"] == 50 and sum(trained) == 50 and len(readings) >= 45
    growth = max(readings[5:]) - readings[4]
    assert growth < 100, f"RSS grew {growth:.0f} MB after the first 5 trials: {[round(r) for r in readings]}"
    if gpu:  # the search keeps nothing on the device between trials
        assert max(gpu[5:]) <= gpu[4] + 1_000_000, gpu
