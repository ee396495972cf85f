"""Which precision a process computes in: what ``amp=True`` means on this device.

The seed design asks for mixed precision on CUDA: fp16 autocast with a GradScaler. On a CPU, AMP
means bfloat16 autocast, and whether that is faster than fp32 depends on the CPU: with AMX tiles it
is about twice as fast; with AVX-512 bf16 instructions alone it can be faster (an AMD EPYC measured
here: 0.64x the fp32 step time at batch 32) or much slower (a Xeon measured here: bf16 matmuls at a
quarter of the fp32 speed); without them it is slower. So on a CPU without AMX the first process
that asks times one training step of the seed model both ways (a few seconds), keeps the answer in
a cache file keyed by CPU model, torch version and thread count, and AMP runs in bf16 only where it
was at least 10% faster; otherwise in fp32, which it says once. The precision that ran is part of a
run's identity (the run record's ``info.precision`` and its config hash), because it changes the numbers.

    "fp32"  no autocast                  any device, and every run with amp=False
    "bf16"  bfloat16 autocast            a CPU with amp=True, where bf16 is faster
    "fp16"  float16 autocast + scaler    CUDA with amp=True
"""
from __future__ import annotations

import functools
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import torch

from core.config import Config
from core.model import DiffusionModel
from core.provenance import cpu_model

Precision = Literal["fp32", "bf16", "fp16"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Where the CPU measurement is kept: $MNIST_DDPM_CACHE, else ~/.cache/mnist-ddpm.
CACHE = Path(os.environ.get("MNIST_DDPM_CACHE", Path.home() / ".cache" / "mnist-ddpm")) / "cpu_precision.json"
BF16_MUST_SAVE = 0.10  # bf16 is chosen only when a training step is at least this much faster


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles, on which bf16 matmuls run several times faster than fp32 ones."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without the probe: read the flags
        cpuinfo = Path("/proc/cpuinfo")
        return cpuinfo.exists() and "amx_bf16" in cpuinfo.read_text()


def time_training_steps(batch: int = 32, repeats: int = 5) -> dict[str, float]:
    """Median seconds of a forward and backward pass of the seed model at ``batch``, in fp32 and in bf16
    autocast, alternating the two inside every repeat so that other load on the machine slows both alike."""
    with torch.random.fork_rng(devices=[]):  # the measurement leaves every random stream as it was
        torch.manual_seed(0)
        model = DiffusionModel(Config()).to(memory_format=torch.channels_last)
        x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)  # (B, C, H, W)
        t = torch.randint(0, 1000, (batch,))
        times = {"fp32": [], "bf16": []}
        for _ in range(repeats + 1):  # the first round lets oneDNN pick its kernels
            for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
                started = time.perf_counter()
                with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                    loss = model(x, t).float().square().mean()
                loss.backward()
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(seconds[1:]) for name, seconds in times.items()}


@functools.cache
def cpu_bf16_is_faster() -> bool:
    """Whether bf16 autocast trains the seed model at least 10% faster than fp32 on this CPU (cached)."""
    if cpu_has_amx():
        return True
    key = f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads"
    cache = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    if key not in cache:
        seconds = time_training_steps()
        cache[key] = {"fp32_s": seconds["fp32"], "bf16_s": seconds["bf16"],
                      "bf16_faster": seconds["bf16"] < (1 - BF16_MUST_SAVE) * seconds["fp32"],
                      "measured": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=CACHE.parent, suffix=".tmp", delete=False) as tmp:
            tmp.write(json.dumps(cache, indent=1))
        os.replace(tmp.name, CACHE)  # runs starting together never read a half-written file
    entry = cache[key]
    if not entry["bf16_faster"]:
        _say_once(f"bf16 autocast is not faster than fp32 on this CPU (no AMX; a training step took "
                  f"{entry['bf16_s']:.3f} s against {entry['fp32_s']:.3f} s): AMP runs in fp32 here "
                  f"(precision=bf16 forces it; the measurement is kept in {CACHE})")
    return entry["bf16_faster"]


@functools.cache
def _say_once(message: str) -> None:
    print(message, file=sys.stderr)


def amp_precision(device: torch.device) -> Precision:
    """The precision of AMP on ``device``: fp16 on CUDA, bf16 on the CPU."""
    return "fp16" if device.type == "cuda" else "bf16"


def resolve_precision(amp: bool, device: torch.device, requested: str = "auto") -> Precision:
    """The precision a process with this ``amp`` flag computes in on ``device``.

    :param requested: what AMP computes in: "auto" (the faster of AMP's precision and fp32 on this
        device), or a precision to force, e.g. "bf16" to re-execute a run made in bf16 on a CPU
        without AMX. With ``amp`` off there is no AMP, and every valid request gives fp32.
    :raises ValueError: naming the request and the valid ones on this device.
    """
    valid = ("auto", "fp32", amp_precision(device))
    if requested not in valid:
        raise ValueError(f"invalid precision={requested!r} on {device.type} (AMP there is "
                         f"{amp_precision(device)}): valid values are {' or '.join(map(repr, valid))}")
    if not amp:
        return "fp32"
    if requested != "auto":
        return requested  # type: ignore[return-value]
    if device.type == "cpu" and not cpu_bf16_is_faster():
        return "fp32"
    return amp_precision(device)
