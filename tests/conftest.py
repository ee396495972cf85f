"""Shared fixtures. Everything runs on the CPU; nothing here is a stub."""
from __future__ import annotations

import pytest
import torch

from core.diffusion import DiffusionProcess


@pytest.fixture
def tiny_process():
    """A full-size seed model with a short schedule (T = 20), fp32, for fast exact checks."""
    return DiffusionProcess(noise_steps=20, device="cpu", amp=False, seed=0)


@pytest.fixture
def batch():
    """A fixed (8, 1, 28, 28) batch in [-1, 1]."""
    return torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(123)) * 2 - 1
