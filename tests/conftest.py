"""Shared pytest setup: every test starts from the same global torch RNG state."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
    yield
