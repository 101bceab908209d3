"""nntune: answers the ten questions of building a neural network for your own data, by measurement.

The public names below are imported on first use (PEP 562), so ``nntune --help`` and other light commands start
without loading torch, scikit-learn or Optuna.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "load": "nntune.api", "train": "nntune.api", "tune": "nntune.api",
    "RunConfig": "nntune.config", "load_config": "nntune.config",
    "Scaler": "nntune.data", "load_dataset": "nntune.data", "split_dataset": "nntune.data",
    "NNTuneClassifier": "nntune.estimators", "NNTuneRegressor": "nntune.estimators",
    "explain": "nntune.evidence.explain",
    "build_model": "nntune.models", "freeze": "nntune.models", "summary": "nntune.models", "unfreeze": "nntune.models",
    "lr_find": "nntune.training.lr_finder",
    "choose_population_size": "nntune.training.pipeline", "fit_population": "nntune.training.pipeline",
    "prepare_data": "nntune.training.pipeline",
}

__all__ = [
    "NNTuneClassifier", "NNTuneRegressor", "RunConfig", "Scaler", "build_model", "choose_population_size", "explain",
    "fit_population", "freeze", "load", "load_config", "load_dataset", "lr_find", "prepare_data", "split_dataset",
    "summary", "train", "tune", "unfreeze",
]

if TYPE_CHECKING:
    from nntune.api import load, train, tune
    from nntune.config import RunConfig, load_config
    from nntune.data import Scaler, load_dataset, split_dataset
    from nntune.estimators import NNTuneClassifier, NNTuneRegressor
    from nntune.evidence.explain import explain
    from nntune.models import build_model, freeze, summary, unfreeze
    from nntune.training.lr_finder import lr_find
    from nntune.training.pipeline import choose_population_size, fit_population, prepare_data


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nntune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
