"""Shared pytest setup: a fixed global torch RNG state per test, and the real data in ../shared/data."""

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_data() -> Path:
    """../shared/data: skipped with a reason when absent, but a failure under CI (CI is set)."""
    if not SHARED_DATA.is_dir():
        message = f"real data not found at {SHARED_DATA} (see ../shared/data/README.md)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must exercise the tests that use it")
        pytest.skip(message)
    return SHARED_DATA
