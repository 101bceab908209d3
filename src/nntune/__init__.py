"""nntune: answers the ten questions of building a neural network for your own data, by measurement."""

from nntune.api import load, train, tune
from nntune.config import RunConfig, load_config
from nntune.data import Scaler, load_dataset, split_dataset
from nntune.estimators import NNTuneClassifier, NNTuneRegressor
from nntune.evidence.explain import explain
from nntune.models import build_model, freeze, summary, unfreeze
from nntune.training.lr_finder import lr_find
from nntune.training.pipeline import choose_population_size, fit_population, prepare_data

__all__ = [
    "NNTuneClassifier", "NNTuneRegressor", "RunConfig", "Scaler", "build_model", "choose_population_size", "explain",
    "fit_population", "freeze", "load", "load_config", "load_dataset", "lr_find", "prepare_data", "split_dataset",
    "summary", "train", "tune", "unfreeze",
]
