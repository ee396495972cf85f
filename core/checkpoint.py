"""Full checkpoints: model, EMA, optimiser, scaler, every RNG state, step and config.

The data position needs no state: :func:`core.data.batch_indices` derives it from the step.
Files are written atomically (temporary file, then rename) and load with ``weights_only=True``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from core.config import Config
from core.diffusion import DiffusionProcess


def save_checkpoint(process: DiffusionProcess, path: Path | str, extra: dict | None = None) -> Path:
    """Write ``process.state_dict()`` (plus ``extra``) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = process.state_dict() | {"extra": extra or {}}
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        torch.save(state, tmp)
    os.replace(tmp.name, path)  # a crash mid-write never leaves a truncated checkpoint behind
    return path


def load_state(path: Path | str) -> dict:
    """The raw state of a checkpoint, loaded safely on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(path: Path | str, device: torch.device | str | None = None) -> DiffusionProcess:
    """A :class:`DiffusionProcess` rebuilt from its stored config and restored to the stored state."""
    state = load_state(path)
    config = Config(**(state["config"] | {"device": "auto" if device is None else torch.device(device).type}))
    process = DiffusionProcess.from_config(config)
    process.load_state_dict(state)
    return process
