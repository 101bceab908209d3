"""Stratified, seeded train/validation/test splits. The test split is held out for one final evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nntune.data.sources import Dataset
from nntune.errors import DataError


@dataclass(frozen=True)
class Split:
    """Index tensors into a Dataset."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor


def split_dataset(ds: Dataset, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0) -> Split:
    """Split indices, stratified by class for classification, reproducible for a given seed."""
    n = len(ds)
    idx = np.arange(n)
    y = ds.y.numpy()
    stratify = ds.task == "classification"
    if stratify:
        counts = np.bincount(y, minlength=len(ds.class_names))
        if counts.min() < 3:
            rare = ds.class_names[int(counts.argmin())]
            raise DataError(f"{ds.name}: class {rare!r} has {counts.min()} samples; each class needs at least 3 "
                            "to appear in train, validation and test")
    k = len(ds.class_names) if stratify else 1
    n_test = max(k, round(n * test_fraction))
    n_val = max(k, round(n * val_fraction))
    if n - n_test - n_val < k:
        raise DataError(f"{ds.name}: {n} samples are too few to split into train/validation/test with "
                        f"{k} class(es) in each; lower val_fraction/test_fraction or bring more data")
    rest, test = train_test_split(idx, test_size=n_test, random_state=seed, stratify=y if stratify else None)
    train, val = train_test_split(rest, test_size=n_val, random_state=seed + 1,
                                  stratify=y[rest] if stratify else None)
    return Split(_sorted(train), _sorted(val), _sorted(test))


def train_test_split(*args, **kwargs):
    """scikit-learn's, imported on first use: a command that splits no data (``nntune summary``) skips its 0.9 s."""
    from sklearn.model_selection import train_test_split as split

    return split(*args, **kwargs)


def _sorted(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.sort(a), dtype=torch.int64)


def redraw(ds: Dataset, split: Split, seed: int) -> Split:
    """Another train/validation split of the same samples (stratified, the same sizes, seeded); the test split is
    kept: the evidence pairs each seed with its own split, so an answer holds for the data, not for one split."""
    rest = torch.cat([split.train, split.val]).numpy()
    y = ds.y.numpy()[rest] if ds.task == "classification" else None
    train, val = train_test_split(rest, test_size=len(split.val), random_state=seed % 2**32, stratify=y)
    return Split(_sorted(train), _sorted(val), split.test)
