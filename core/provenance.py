"""Where a run ran: git state, package versions, threads, device and peak memory.

Bitwise equality of a re-execution depends on more than the seed: the torch thread count (a
different count changes the reduction order of matmuls, so 1 and 2 threads differ in the last
bits), the package versions and the device. :func:`run_environment` records them, as plain
strings and numbers, and :func:`git_state` the code.

A machine that receives a copy of the files without ``.git`` (a GPU machine lent for minutes) can
still record the commit: :func:`git_snapshot`, written in the checkout before the copy, holds the
commit and the git blob id of every tracked file, and there :func:`git_state` (pointed to it by
``$ABLATIONS_GIT_SNAPSHOT``) checks the copy's files against it, as ``git status`` would.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

GIT_SNAPSHOT_ENV = "ABLATIONS_GIT_SNAPSHOT"  # path of a git_snapshot() JSON, for a copy without .git
REPO = Path(__file__).resolve().parent.parent
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


def _git(repo: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)


def git_state(repo: Path = REPO) -> dict:
    """Commit, dirty flag and changed files of the code that runs (tracked files, and Python files git neither
    tracks nor ignores), or None outside git.

    Where ``$ABLATIONS_GIT_SNAPSHOT`` names a :func:`git_snapshot` of the checkout this is a copy of, the copy
    is checked against it instead, even where the copy holds a ``.git`` of its own: a GPU machine's copy may
    carry one from another commit (as one did), and the snapshot is what was meant to run there.
    """
    if snapshot := os.environ.get(GIT_SNAPSHOT_ENV):
        return state_from_snapshot(json.loads(Path(snapshot).read_text()), repo)
    head = _git(repo, "rev-parse", "HEAD")
    if head.returncode:
        return {"commit": None, "dirty": None, "changed": None}
    changed = [line[3:] for line in _git(repo, "status", "--porcelain", "--untracked-files=no").stdout.splitlines()]
    # A new Python file that git does not ignore may be imported by the run, and no commit holds it.
    changed += _git(repo, "ls-files", "--others", "--exclude-standard", "--", "*.py").stdout.splitlines()
    return {"commit": head.stdout.strip(), "dirty": bool(changed), "changed": changed}


def git_snapshot(repo: Path = REPO) -> dict:
    """The commit checked out in ``repo`` and the blob id of each file it tracks (files alone: no links)."""
    head = _git(repo, "rev-parse", "HEAD")
    if head.returncode:
        raise RuntimeError(f"{repo} is not a git checkout: {head.stderr.strip()}")
    entries = (line.split(None, 3) for line in _git(repo, "ls-tree", "-r", "HEAD").stdout.splitlines())
    return {"commit": head.stdout.strip(),
            "blobs": {path: blob for mode, kind, blob, path in entries if kind == "blob" and mode != "120000"}}


def blob_id(path: Path) -> str:
    """git's id of a file's content: SHA-1 of ``blob <size>\\0`` and the bytes."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def state_from_snapshot(snapshot: dict, repo: Path = REPO) -> dict:
    """:func:`git_state` of a copy of the snapshot's checkout: the tracked files that differ or are gone."""
    changed = [path for path, blob in snapshot["blobs"].items()
               if not (repo / path).is_file() or blob_id(repo / path) != blob]
    return {"commit": snapshot["commit"], "dirty": bool(changed), "changed": changed}


if __name__ == "__main__":  # python -m core.provenance > SNAPSHOT.json: the checkout's git_snapshot()
    print(json.dumps(git_snapshot(), indent=1))
