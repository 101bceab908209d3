import numpy as np
import pytest
import torch

from nntune.data.sources import load_digits


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def digits():
    return load_digits()


@pytest.fixture
def float64():
    """Tensors default to float64 inside the test (the exactness tests compare weights at that precision)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)
