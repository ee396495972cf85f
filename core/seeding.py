"""Deterministic seeding: one call makes a run reproducible bit for bit on the same machine.

Bitwise equality also depends on the torch thread count (a different count changes the
reduction order of matmuls): :func:`run_environment` records it, and re-executions must use it.
"""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

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


def run_environment() -> dict:
    """What a re-execution must match for bitwise equality: threads, versions, device."""
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cuda": torch.version.cuda,
           "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    return env


# What a run executes: a change elsewhere (tests, docs, benchmarks) cannot change its result.
RUN_CODE = ("core/", "ablations/", "pyproject.toml")


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: VmHWM, which exec resets, unlike ru_maxrss (a child
    started by fork + exec would otherwise report its parent's peak when that was larger)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def git_state(repo: Path = Path(__file__).resolve().parent.parent) -> dict:
    """Commit, dirty flag and changed tracked files of the code that runs, or None outside git."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)

    head = git("rev-parse", "HEAD")
    if head.returncode:
        return {"commit": None, "dirty": None, "changed": None}
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").stdout.splitlines()]
    return {"commit": head.stdout.strip(), "dirty": bool(changed), "changed": changed}


def dirty_run_code(git: dict) -> bool:
    """Whether uncommitted changes could touch what a run executes (:data:`RUN_CODE`).

    A dirty record without the list of changed files (older runs) counts as dirty.
    """
    if not git.get("dirty"):
        return False
    changed = git.get("changed")
    return not changed or any(path.startswith(RUN_CODE) for path in changed)
