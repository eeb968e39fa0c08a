"""Shared fixtures: where the real data is, small deterministic settings."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sonodistill.paths import data_root

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of ../shared/data; tests that need it are skipped with a reason when absent."""
    root = data_root()
    if root is None:
        pytest.skip("real data not found: set SONODISTILL_DATA or place shared/data beside the checkout")
    return root


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP contention on a loaded 2-core machine.

    Use with `pytestmark = pytest.mark.usefixtures("one_thread")` in modules of tiny-model tests.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
