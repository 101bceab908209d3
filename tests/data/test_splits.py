import numpy as np
import torch

from nntune.data.splits import split_dataset
from nntune.data.sources import Dataset


def test_split_is_disjoint_stratified_and_seeded(digits):
    s = split_dataset(digits, 0.15, 0.15, seed=3)
    all_idx = torch.cat([s.train, s.val, s.test])
    assert len(all_idx) == len(digits) and len(all_idx.unique()) == len(digits)
    overall = np.bincount(digits.y.numpy()) / len(digits)
    for part in (s.val, s.test):
        share = np.bincount(digits.y[part].numpy(), minlength=10) / len(part)
        assert np.abs(share - overall).max() < 0.02
    again = split_dataset(digits, 0.15, 0.15, seed=3)
    assert torch.equal(s.test, again.test)
    assert not torch.equal(s.test, split_dataset(digits, 0.15, 0.15, seed=4).test)


def test_regression_split():
    ds = Dataset("r", torch.randn(100, 3), torch.randn(100), "regression")
    s = split_dataset(ds, 0.2, 0.1, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (70, 20, 10)


def test_too_few_samples_for_many_classes_is_a_data_error():
    import pytest

    from nntune.errors import DataError

    ds = Dataset("many", torch.randn(60, 2), torch.arange(60) % 20, "classification", [str(i) for i in range(20)])
    with pytest.raises(DataError, match="too few to split"):
        split_dataset(ds, 0.5, 0.3, seed=0)
