"""Shared fixtures. The suite runs one torch thread per process unless OMP_NUM_THREADS says otherwise: its models are
tiny (a second intra-op thread costs more in synchronisation than it gains), the tests that start several worker
processes would oversubscribe the cores, and ``make test`` runs one pytest process per core (pytest-xdist)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported; inherited by the processes tests start

import numpy as np
import pytest
import torch

if os.environ["OMP_NUM_THREADS"].isdigit():  # in case a plugin imported torch first
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

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
