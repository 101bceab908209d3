"""The top-level ``nntune.train``, ``nntune.tune`` and ``nntune.load``: each takes the config form (a RunConfig and a
run directory, returning ``result.json``'s content) or, for notebooks, arrays in memory (returning a fitted
scikit-learn estimator), so one name serves both ways of working."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nntune.config import RunConfig


def train(*args: Any, **kwargs: Any) -> Any:
    """``train(cfg, out=None, progress=False, dataset=None, log=())`` -> result dict, as ``nntune train``;
    ``train(X, y, **options)`` -> a fitted :class:`~nntune.estimators.NNTuneClassifier` (or regressor) trained once
    with the options (``family``, ``epochs``, ``lr``, ``scaler``, ...)."""
    if (args and isinstance(args[0], RunConfig)) or "cfg" in kwargs:
        from nntune.training.pipeline import train as train_config

        return train_config(*args, **kwargs)
    from nntune.estimators import fit_arrays

    return fit_arrays(*args, search=False, **kwargs)


def tune(*args: Any, **kwargs: Any) -> Any:
    """``tune(cfg, out, resume=False, progress=False, log=(), dataset=None)`` -> result dict, as ``nntune tune``;
    ``tune(X, y, trials=20, timeout=None, **options)`` -> a fitted estimator holding the searched model."""
    if (args and isinstance(args[0], RunConfig)) or "cfg" in kwargs:
        from nntune.search.study import tune as tune_config

        return tune_config(*args, **kwargs)
    from nntune.estimators import fit_arrays

    return fit_arrays(*args, search=True, **kwargs)


def load(directory: str | Path) -> Any:
    """A saved model: an :class:`~nntune.artifacts.Artifact` from a run's ``best/``, or the fitted estimator a
    directory written by ``NNTuneClassifier.save`` holds."""
    from nntune import artifacts
    from nntune.estimators import ESTIMATOR_FILE, load_estimator

    if (Path(directory) / ESTIMATOR_FILE).is_file():
        return load_estimator(directory)
    return artifacts.load(directory)
