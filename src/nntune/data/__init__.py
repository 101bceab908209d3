"""Data: sources, splits, scalers and augmentation."""

from nntune.data.scalers import Scaler
from nntune.data.sources import Dataset, load_dataset
from nntune.data.splits import Split, split_dataset

__all__ = ["Dataset", "Scaler", "Split", "load_dataset", "split_dataset"]
