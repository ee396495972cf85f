"""Where a run ran: git state, package versions, threads, device and peak memory.

Bitwise equality of a re-execution depends on more than the seed: the torch thread count (a
different count changes the reduction order of matmuls, so 1 and 2 threads differ in the last
bits), the package versions and the device. :func:`run_environment` records them, as plain
strings and numbers, and :func:`git_state` the code.
"""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

# The packages whose versions can change a run's numbers.
RESULT_PACKAGES = ("torch", "torchvision", "numpy", "torch-fidelity", "scipy")


def package_versions(names: tuple[str, ...] = RESULT_PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (None when absent), as plain strings."""
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None
    return {name: version(name) for name in names}


def cpu_model() -> str:
    """The CPU's model name: CPUs of other makes run other kernels (bf16 above all), which differ in the last bits."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    return names[0] if names else platform.processor() or platform.machine()


def run_environment() -> dict:
    """What a re-execution must match for bitwise equality: threads, versions, device, CPU."""
    return {"torch": str(torch.__version__),  # a TorchVersion, which a record would store as a pickled object
            "threads": torch.get_num_threads(), "cuda": torch.version.cuda,
            "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "cpu": cpu_model(), "packages": package_versions()}


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
