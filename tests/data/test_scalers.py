import numpy as np
import pytest
import torch
from sklearn.preprocessing import MinMaxScaler, Normalizer, RobustScaler, StandardScaler

from nntune.data.scalers import Scaler
from nntune.errors import ConfigError

ORACLES = {"minmax": MinMaxScaler, "zscore": StandardScaler, "robust": RobustScaler, "unit": Normalizer}


def _data():
    rng = np.random.default_rng(0)
    train = rng.normal(3, 2, size=(200, 5)) * np.array([1, 10, 0.1, 1, 1])
    train[:, 3] = 7.0  # a constant column
    test = rng.normal(3, 2, size=(50, 5))
    return train, test


@pytest.mark.parametrize("method", sorted(ORACLES))
def test_matches_sklearn_including_constant_column(method):
    train, test = _data()
    ours = Scaler(method).fit(torch.tensor(train, dtype=torch.float32))
    ref = ORACLES[method]().fit(train)
    got = ours.transform(torch.tensor(test, dtype=torch.float32)).numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref.transform(test), rtol=1e-4, atol=1e-4)


def test_zero_sample_stays_zero_under_unit():
    x = torch.zeros(2, 3)
    x[1] = torch.tensor([3.0, 4.0, 0.0])
    out = Scaler("unit").transform(x)
    assert out[0].abs().sum() == 0 and torch.allclose(out[1], torch.tensor([0.6, 0.8, 0.0]))


def test_feature_wise_scalers_work_on_images_like_flattened_sklearn():
    imgs = torch.rand(30, 1, 4, 4) * 16
    ours = Scaler("zscore").fit_transform(imgs).reshape(30, -1).numpy()
    ref = StandardScaler().fit_transform(imgs.reshape(30, -1).double().numpy())
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_channel_statistics():
    x = torch.rand(50, 3, 6, 6) * torch.tensor([1.0, 5.0, 0.0]).reshape(1, 3, 1, 1)
    sc = Scaler("channel").fit(x)
    out = sc.transform(x)
    assert torch.allclose(out[:, :2].mean((0, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(out[:, :2].std((0, 2, 3), unbiased=False), torch.ones(2), atol=1e-4)
    assert torch.isfinite(out).all() and out[:, 2].abs().max() == 0
    with pytest.raises(ConfigError, match="'channel' needs images"):
        Scaler("channel").fit(torch.rand(10, 3))


@pytest.mark.parametrize("method", ["minmax", "zscore", "robust", "channel"])
def test_state_dict_roundtrip(method):
    x = torch.rand(40, 2, 5, 5)
    a = Scaler(method).fit(x)
    b = Scaler(method).load_state_dict(a.state_dict())
    assert torch.equal(a.transform(x), b.transform(x))
    assert torch.allclose(a.inverse_transform(a.transform(x)), x, atol=1e-5)


def test_unknown_method():
    with pytest.raises(ConfigError, match="unknown method 'l3'"):
        Scaler("l3")
