"""Deterministic seeding: one call makes a run reproducible bit for bit on the same machine.

Seeding is not all of it: the thread count, versions and device matter too, and
:mod:`core.provenance` records them.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

# cuBLAS needs a fixed workspace for deterministic results; it must be set before the first
# cuBLAS call, so it is set at import (``setdefault``: a user's own value wins).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, numpy and torch (CPU and every CUDA device), and turn on deterministic kernels.

    :param seed: the run's seed.
    :param deterministic: also call ``torch.use_deterministic_algorithms(True)`` and fix cuDNN.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds the CPU and all CUDA generators
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed``: every explicit random draw uses one."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def worker_init_fn(worker_id: int) -> None:
    """DataLoader worker seeding: derive Python's and numpy's seeds from torch's per-worker seed."""
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)


def seeded_loader(dataset, batch_size: int, seed: int, shuffle: bool = True, num_workers: int = 0,
                  drop_last: bool = True) -> torch.utils.data.DataLoader:
    """A DataLoader whose order and worker seeds come from ``seed`` alone."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, drop_last=drop_last,
        generator=make_generator(seed), worker_init_fn=worker_init_fn,
    )


def rng_state() -> dict:
    """Every global RNG state (Python, numpy, torch CPU and CUDA), for checkpoints."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # numpy's key array is stored as a tensor so that checkpoints load with weights_only=True.
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
