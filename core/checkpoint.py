"""What a process saves: full checkpoints (to resume training) and final weights (to sample again).

A full checkpoint holds the model, EMA, optimiser, scaler, every RNG state, step and config; the
data position needs no state, since :func:`core.data.batch_indices` derives it from the step.
The final-weights format holds only what sampling needs: config, step, model and EMA weights.
Files are written atomically (temporary file, then rename) and load with ``weights_only=True``.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

import torch

from core.config import Config
from core.diffusion import DiffusionProcess, resolve_device
from core.precision import amp_precision


def _save_atomically(state: dict, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        torch.save(state, tmp)
    os.replace(tmp.name, path)  # a crash mid-write never leaves a truncated file behind
    return path


def _load(source: Path | str | bytes | BinaryIO) -> dict:
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    return torch.load(source, map_location="cpu", weights_only=True)


def save_checkpoint(process: DiffusionProcess, path: Path | str, extra: dict | None = None) -> Path:
    """Write ``process.state_dict()`` (plus ``extra``) to ``path`` atomically."""
    return _save_atomically(process.state_dict() | {"extra": extra or {}}, path)


def without_ema(state: dict) -> dict:
    """A full checkpoint's state as the same run with ``ema=False`` would have left it.

    EMA reads the trained weights and never writes them, and draws nothing: an EMA run's weights,
    optimiser, scaler and generators are its EMA-off twin's, bit for bit. Only the config and the
    averaged weights differ.
    """
    return state | {"config": state["config"] | {"ema": False}, "ema": None}


def save_state(state: dict, path: Path | str) -> Path:
    """Write a state in the full-checkpoint format (``state_dict()`` plus ``extra``) atomically."""
    return _save_atomically(state, path)


def load_state(path: Path | str) -> dict:
    """The raw state of a checkpoint, loaded safely on the CPU."""
    return _load(path)


def load_checkpoint(path: Path | str, device: torch.device | str | None = None) -> DiffusionProcess:
    """A :class:`DiffusionProcess` rebuilt from its stored config and restored to the stored state.

    :param device: where to open it; by default CUDA when present, whatever device it was saved on.
        It continues in the precision it was saved in where that device can run it, else in
        the device's own (a CUDA checkpoint opened on a CPU, say, to sample from it).
    """
    state = load_state(path)
    config = Config.from_mapping(state["config"])
    device = resolve_device(device or "auto")
    stored = state.get("precision", "auto")  # checkpoints before precision was recorded: "auto"
    precision = stored if stored in ("fp32", amp_precision(device)) else "auto"
    process = DiffusionProcess(config, device=device, precision=precision)
    process.load_state_dict(state)
    return process


def save_weights(process: DiffusionProcess, path: Path | str) -> Path:
    """The final-weights format: ``config``, ``step``, ``model`` and ``ema`` (None without EMA)."""
    ema = process.ema_model.state_dict() if process.ema_model is not None else None
    return _save_atomically({"config": process.config.to_dict(), "step": process.step,
                             "model": process.model.state_dict(), "ema": ema}, path)


def load_weights(source: Path | str | bytes | BinaryIO) -> dict:
    """What :func:`save_weights` wrote, from a path, the file's bytes or an open binary file."""
    return _load(source)


def restore_weights(process: DiffusionProcess, weights: dict) -> None:
    """Put final weights (model, and EMA when the process keeps one) into ``process`` to sample from."""
    process.model.load_state_dict(weights["model"])
    if process.ema_model is not None:
        process.ema_model.load_state_dict(weights["ema"])
