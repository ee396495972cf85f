"""Speed-only paths: channels_last memory, torch.compile with a stated fallback, CUDA-graph sampling.

None of these changes what is computed, only how: the tests check fp32 outputs against the plain
eager NCHW path (bitwise where the kernels allow, else to float rounding) and bf16 within its
tolerance. Noise is always drawn outside them from the process's seeded generators.

torch.compile keeps its kernels in inductor's cache, ``$TORCHINDUCTOR_CACHE_DIR`` (by default
``/tmp/torchinductor_$USER``): the first compiled run pays about 40 s on a 2-core CPU, later ones
reuse the cache. Point the variable at a persistent folder to keep it across reboots.
"""
from __future__ import annotations

import shutil
import sys
import warnings
from typing import Callable

import torch


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Store every 4-d weight as NHWC: oneDNN and cuDNN convolutions run faster in that layout."""
    return model.to(memory_format=torch.channels_last)


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


class GraphedDenoiser:
    """One eps(x_t, t) call captured as a CUDA graph and replayed for every sampler step.

    A sampler step is a few hundred small kernels at batch sizes where launch overhead dominates; a
    replay launches them as one. Only full batches of the captured shape are replayed.

    :param eps: the function to capture, ``eps(x, t) -> (B, C, H, W)`` float.
    :param example: an (B, C, H, W) tensor on the CUDA device giving the captured shape.
    """

    def __init__(self, eps: Callable, example: torch.Tensor):
        self.static_x = example.clone()
        self.static_t = torch.zeros(example.shape[0], dtype=torch.long, device=example.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph, as capture requires
            for _ in range(2):
                eps(self.static_x, self.static_t)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_eps = eps(self.static_x, self.static_t)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.static_x.copy_(x)
        self.static_t.copy_(t)
        self.graph.replay()
        return self.static_eps.clone()
