"""Speed-only paths: channels_last memory, a GroupNorm route, torch.compile with a stated fallback, CUDA graphs.

None of these changes what is computed, only how: the tests check fp32 outputs against the plain
eager NCHW path (bitwise where the kernels allow, else to float rounding) and bf16 within its
tolerance. Noise is always drawn outside them from the process's seeded generators.

torch.compile keeps its kernels in inductor's cache, ``$TORCHINDUCTOR_CACHE_DIR`` (by default
``/tmp/torchinductor_$USER``): the first compiled run pays about 40 s on a 2-core CPU, later ones
reuse the cache. Point the variable at a persistent folder to keep it across reboots.
"""
from __future__ import annotations

import contextlib
import shutil
import sys
import warnings
from typing import Callable

import torch
from torch import nn


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Store every 4-d weight as NHWC: oneDNN and cuDNN convolutions run faster in that layout."""
    return model.to(memory_format=torch.channels_last)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm``, with the same values by a faster route in one slow case of the CPU.

    torch's bf16 GroupNorm over a channels_last CPU tensor is slow when a group holds few channels: at
    (64, 32, 28, 28), 8 groups of 4, it took 21.6 ms against 8.8 ms for the same input cast to fp32, and a
    network evaluation at batch 64 took 1.17x as long without this route as with it (one thread of a Xeon
    with AMX; ``python benchmarks/group_norm.py``, ``benchmarks/group-norm.json``). The bf16 kernel computes
    in fp32, and the fp32 kernel's output rounded to bf16 is the same tensor, bit for bit, for groups of up
    to 8 channels (the benchmark and ``tests/test_fastpath.py``). Their input gradients differ in the last
    bit, so only work without autograd (sampling, evaluation) takes the route: training is unchanged.
    ``GroupNorm.route = False`` turns it off (the benchmark's comparison).
    """

    route = True
    MAX_CHANNELS_PER_GROUP = 8  # from 16 up the bf16 kernel is faster, and its bits differ (the same benchmark)

    def takes_route(self, x: torch.Tensor) -> bool:
        """Whether ``x`` is normalised in fp32, then rounded back to bf16."""
        return (self.route and not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.bfloat16
                and self.num_channels // self.num_groups <= self.MAX_CHANNELS_PER_GROUP
                and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.takes_route(x):
            return super().forward(x.float()).to(torch.bfloat16)
        return super().forward(x)


def compile_unavailable_reason(device: torch.device) -> str | None:
    """Why torch.compile cannot work here, or None when it should."""
    if sys.platform == "win32":
        return "torch.compile's inductor backend does not support Windows"
    if device.type == "cpu" and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        return "no C++ compiler (g++, c++ or clang++) on PATH, which inductor needs to build CPU kernels"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "the triton package is missing, which inductor needs to build CUDA kernels"
    return None


class CompiledModule:
    """Calls ``torch.compile(module)``, or the module itself after a failure, saying why once.

    The eager module keeps the parameters, so the state dict and the optimiser are unaffected.
    """

    def __init__(self, module: torch.nn.Module, device: torch.device, mode: str | None = None):
        self.module = module
        reason = compile_unavailable_reason(device)
        self.compiled: Callable | None = None if reason else torch.compile(module, mode=mode)
        if reason:
            self._fall_back(reason)

    def _fall_back(self, reason: str) -> None:
        warnings.warn(f"compile=True fell back to eager execution: {reason}", RuntimeWarning, stacklevel=3)
        self.compiled = None

    def __call__(self, *args):
        if self.compiled is None:
            return self.module(*args)
        try:
            return self.compiled(*args)
        except Exception as error:  # inductor raises many types (BackendCompilerFailed, CppCompileError, ...)
            self._fall_back(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
            return self.module(*args)


class CudaGraphed:
    """``fn(*inputs)`` captured once as a CUDA graph, then replayed on copies of new inputs.

    A sampler step or a training step of this model is hundreds of small kernels, and at these
    batch sizes launching them costs more than running them; a replay launches them all at once.
    The replay runs the very kernels that were captured, so results equal eager execution.

    :param fn: the function to capture; it takes and returns tensors on one CUDA device.
    :param examples: example inputs giving the captured shapes (their values do not matter).
    :param warmup: calls of ``fn`` on the examples before the capture, on a side stream, as capture
        requires. Pass 0 when the caller has already run ``fn`` eagerly on a side stream (a training
        step cannot be called for nothing: each call moves the weights).
    """

    def __init__(self, fn: Callable, examples: tuple[torch.Tensor, ...], warmup: int = 2):
        self.static_inputs = tuple(x.clone() for x in examples)
        with side_stream():
            for _ in range(warmup):
                fn(*self.static_inputs)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_output = fn(*self.static_inputs)

    def fits(self, *inputs: torch.Tensor) -> bool:
        """Whether ``inputs`` have the captured shapes (only those can be replayed)."""
        return all(x.shape == s.shape for x, s in zip(inputs, self.static_inputs, strict=True))

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        for static, x in zip(self.static_inputs, inputs, strict=True):
            static.copy_(x)
        self.graph.replay()
        return self.static_output.clone()  # the next replay overwrites static_output


class GraphedAfterWarmup:
    """``fn(*inputs)`` run eagerly for its first ``warmup`` calls (on a side stream, as capture requires),
    then captured once as a :class:`CudaGraphed` and replayed for inputs of the captured shapes; inputs of
    other shapes run eagerly. For a function that cannot be called for nothing (a training step moves the
    weights), so its warm-up calls are real ones.
    """

    def __init__(self, fn: Callable, warmup: int):
        self.fn, self.warmup = fn, warmup
        self.graph: CudaGraphed | None = None
        self.eager_calls = 0

    def __call__(self, *inputs: torch.Tensor, use_graph: bool) -> torch.Tensor:
        if use_graph and self.graph is None and self.eager_calls >= self.warmup:
            self.graph = CudaGraphed(self.fn, inputs, warmup=0)
        if use_graph and self.graph is not None and self.graph.fits(*inputs):
            return self.graph(*inputs)
        with side_stream() if use_graph else contextlib.nullcontext():
            output = self.fn(*inputs)
        self.eager_calls += 1
        return output


@contextlib.contextmanager
def side_stream():
    """Run the block on a fresh CUDA stream, ordered after and before the current stream's work.

    CUDA-graph capture needs the lazy set-up of a function (cuBLAS handles, autograd's streams,
    the optimiser's state) to have happened on a stream other than the one it captures on.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        yield
    torch.cuda.current_stream().wait_stream(side)
