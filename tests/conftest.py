"""Shared fixtures. Everything runs on the CPU; nothing here is a stub."""
from __future__ import annotations

import signal

import pytest
import torch

from core.diffusion import DiffusionProcess
from tests.helpers import Server, run_env


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real SecantusDB server for one test module, stopped by PID at its end."""
    srv = Server(tmp_path_factory.mktemp("mongo")).start()
    yield srv
    srv.kill(signal.SIGTERM)


@pytest.fixture(scope="module")
def env(server, tmp_path_factory):
    """Environment for experiment subprocesses: this module's server and a fresh ABLATIONS_HOME."""
    return run_env(server.url, tmp_path_factory.mktemp("home"))


@pytest.fixture
def tiny_process():
    """A full-size seed model with a short schedule (T = 20), fp32, for fast exact checks."""
    return DiffusionProcess(noise_steps=20, device="cpu", amp=False, seed=0)


@pytest.fixture
def batch():
    """A fixed (8, 1, 28, 28) batch in [-1, 1]."""
    return torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(123)) * 2 - 1
