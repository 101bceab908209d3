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
