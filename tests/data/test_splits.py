import numpy as np
import torch

from nntune.data.splits import redraw, split_dataset
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


def test_redrawn_splits_keep_the_test_split_and_the_sizes(digits):
    base = split_dataset(digits, seed=0)
    a, b, again = (redraw(digits, base, s) for s in (11, 12, 11))
    for s in (a, b):
        assert torch.equal(s.test, base.test) and (len(s.train), len(s.val)) == (len(base.train), len(base.val))
        together = torch.cat([s.train, s.val])
        assert len(set(together.tolist())) == len(together)  # disjoint
        assert set(together.tolist()) == set(torch.cat([base.train, base.val]).tolist())
        counts = np.bincount(digits.y[s.val].numpy(), minlength=10)
        assert counts.max() - counts.min() <= 2  # stratified
    assert torch.equal(a.val, again.val) and not torch.equal(a.val, b.val)
    reg = Dataset("r", torch.randn(50, 3), torch.randn(50), "regression")
    assert len(redraw(reg, split_dataset(reg), 3).val) == len(split_dataset(reg).val)
