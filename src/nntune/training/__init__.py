"""Training: the Trainer, the population trainer, callbacks, schedules, early stopping and diagnostics."""

from nntune.training.callbacks import BestCheckpoint, Callback, ProgressBar
from nntune.training.early_stopping import EarlyStopping
from nntune.training.population import PopulationTrainer
from nntune.training.epoch import FitResult
from nntune.training.single import Trainer

__all__ = ["BestCheckpoint", "Callback", "EarlyStopping", "FitResult", "PopulationTrainer", "ProgressBar", "Trainer"]
