"""CUDA MPS for packed runs: a daemon of our own, so that the kernels of K run processes overlap.

Without MPS the processes of a ``--pack`` take turns on the GPU (time slices); with it their
kernels run side by side. MPS changes where kernels run, not what they compute: the CUDA-only test
``tests/test_suite_benchmark.py::test_cuda_pack_equals_solo_and_repeats_bitwise`` checks a pack under MPS
against the same runs alone, bit for bit.

    with serving(Path("work")) as mps_env:              # the daemon's pipe and log folders
        subprocess.run([...], env=os.environ | mps_env)  # processes started so are its clients
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

CONTROL = "nvidia-cuda-mps-control"


def control() -> str:
    """The daemon's control program.

    :raises ValueError: when it is not on PATH (no CUDA toolkit here), naming it.
    """
    found = shutil.which(CONTROL)
    if found is None:
        raise ValueError(f"invalid --mps: {CONTROL} is not on PATH here (CUDA MPS needs an NVIDIA GPU and "
                         "its driver tools); leave out --mps to let the packed runs take turns")
    return found


def require(error) -> None:
    """Before any work: report through ``error`` (e.g. an argparse parser's) when MPS cannot run here."""
    try:
        control()
    except ValueError as exc:
        error(str(exc))


@contextlib.contextmanager
def serving(work: Path):
    """Run an MPS daemon with its pipe and log folders under ``work``; yield the variables that make a
    process its client.

    :param work: a folder of this sweep's (a daemon of someone else's keeps its own folders).
    """
    program = control()
    folders = {"CUDA_MPS_PIPE_DIRECTORY": work / "mps-pipe", "CUDA_MPS_LOG_DIRECTORY": work / "mps-log"}
    for path in folders.values():
        path.mkdir(parents=True, exist_ok=True)
    mps_env = {name: str(path) for name, path in folders.items()}
    env = os.environ | mps_env
    # In a session of its own: a Ctrl-C or a `timeout` that signals the sweep's process group, and so stops its runs
    # (ablations/sweep.py), must not take away the daemon their final checkpoints still run on.
    subprocess.run([program, "-d"], env=env, check=True, start_new_session=True)
    try:
        yield mps_env
    finally:
        subprocess.run([program], input="quit\n", text=True, env=env, check=False)
