"""Shared test set-up: float64 on, and the real data sets of ../shared when present."""

import os

import jax
import pytest

jax.config.update("jax_enable_x64", True)

SHARED_DATASETS = os.environ.get(
    "KIP_SHARED_DATASETS", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets")
)


@pytest.fixture
def shared_datasets():
    """Folder with mnist.npz etc.; skips the test (with the reason) when absent, as in a fresh clone."""
    if not os.path.exists(os.path.join(SHARED_DATASETS, "mnist.npz")):
        pytest.skip(f"real data sets not found in {SHARED_DATASETS} (set KIP_SHARED_DATASETS)")
    return SHARED_DATASETS
