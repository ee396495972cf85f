"""Shared fixtures. Everything runs on the CPU; nothing here is a stub."""
from __future__ import annotations

import os
import signal

import pytest
import torch

from ablations import store
from core.diffusion import DiffusionProcess
from tests.helpers import SEQUENTIAL, Server, run_env, run_sweep

# `make test` runs the test modules in three pytest-xdist workers, and torch computes on one thread in each worker
# and in every process a test starts (threads=0 reads OMP_NUM_THREADS). Torch thread pools that share the cores
# are many times slower than the same work one after the other: `python benchmarks/shared_cores.py` on a 2-core
# Xeon, 20 training steps: 4.0 s alone at 2 threads, 45 s each for two such processes side by side.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def no_embedded_server_left_behind():
    """Tests talk to servers of their own: one that starts the default embedded server (in the user's
    ``runs/``) and leaves it running fails the session, and the server is stopped."""
    before = store.server_pid()
    yield
    after = store.server_pid()
    if after is not None and after != before:
        store.stop_embedded(log=lambda line: None)
        pytest.fail(f"a test started the default embedded server (PID {after}) and left it running")


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


@pytest.fixture(scope="module")
def sequential_db(server, env):
    """The attention-only smoke sweep at seed 0, one run at a time, stored directly in database `sequential`."""
    first = run_sweep(["-m", f"{server.url}/sequential", *SEQUENTIAL], env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return server.db("sequential")


@pytest.fixture
def tiny_process():
    """A full-size seed model with a short schedule (T = 20), fp32, for fast exact checks."""
    return DiffusionProcess(noise_steps=20, device="cpu", amp=False, seed=0)


@pytest.fixture
def batch():
    """A fixed (8, 1, 28, 28) batch in [-1, 1]."""
    return torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(123)) * 2 - 1
