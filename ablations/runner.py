"""The body of one experiment run: train, evaluate, and record everything an audit needs.

Phases: provenance -> training (with full checkpoints and exact resume) -> sampling -> metrics
-> artifacts. Everything goes through Sacred's ``_run`` (metrics, info, artifacts), under the
names of :mod:`ablations.record`; the local checkpoint lives in the run's journal directory.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from sacred.observers import FileStorageObserver
from sacred.utils import SacredInterrupt

from ablations import record
from ablations.stopping import raise_if_stopped
from core.checkpoint import load_state, save_checkpoint, save_weights
from core.classifier import weights_sha256
from core.config import Config
from core.data import MNIST_SHA256, as_tensor, mnist
from core.diffusion import DiffusionProcess
from core.evaluation import sample_and_evaluate
from core.fidelity import real_floor, to_uint8
from core.likelihood import heldout_metrics
from core.model import parameter_breakdown
from core.provenance import git_state, peak_rss_mb, run_environment
from core.train import train


def journal_dir(_run) -> Path:
    """The run's own directory in the local journal (where its checkpoint is kept)."""
    for observer in _run.observers:
        if isinstance(observer, FileStorageObserver) and observer.dir:
            return Path(observer.dir)
    return Path(tempfile.mkdtemp(prefix="unobserved-run-"))


class Recorder:
    """Sacred metric logging that also keeps the history, so a resumed run can replay it."""

    def __init__(self, _run, history: list | None = None):
        self._run, self.history = _run, []
        for name, value, step in history or []:
            self(name, value, step)

    def __call__(self, name: str, value: float, step: int) -> None:
        self._run.log_scalar(name, float(value), step)
        self.history.append((name, float(value), int(step)))


def run_training(_run, process: DiffusionProcess, resume_state: dict | None, checkpoint_every: int) -> None:
    """Train with periodic full checkpoints; on SIGINT/SIGTERM write a final one and re-raise."""
    path = journal_dir(_run) / record.CHECKPOINT
    extra = (resume_state or {}).get("extra", {})
    recorder = Recorder(_run, extra.get("history"))
    window = list(extra.get("window", []))

    def checkpoint(current_window):
        save_checkpoint(process, path, extra={"history": recorder.history, "window": list(current_window)})

    try:
        images = as_tensor(mnist(train=True))
        raise_if_stopped()  # a stop lost during the start-up: checkpointed at the step it came in
        train(process, images, log=recorder, checkpoint=checkpoint, checkpoint_every=checkpoint_every, window=window)
    except (KeyboardInterrupt, SacredInterrupt):
        checkpoint(window)
        print(f"Interrupted at step {process.step}; checkpoint in {path}")
        raise


def save_artifacts(_run, process: DiffusionProcess, samples: torch.Tensor, out: Path) -> None:
    """The run's artifacts (:data:`ablations.record.ARTIFACTS`): sample grid, samples, final weights."""
    from torchvision.utils import save_image  # here, not at the top: see core/data.py

    grid = out / record.SAMPLE_GRID
    save_image(samples[:64].float().cpu() * 0.5 + 0.5, grid, nrow=8)
    npz = out / record.SAMPLES
    np.savez_compressed(npz, samples=to_uint8(samples).numpy())  # (N, 1, 28, 28) uint8
    weights = save_weights(process, out / record.FINAL_WEIGHTS)
    for path in (grid, npz, weights):
        _run.add_artifact(str(path), name=path.name)


def restored_state(process: DiffusionProcess, _config: dict) -> dict | None:
    """The checkpoint a run starts from, loaded into ``process``: its own (``resume``), or the one its fused
    group left it (``fused_checkpoint``, :mod:`ablations.fused_group`); None for a fresh run."""
    path = _config.get("resume_checkpoint") if _config.get("resume") is not None else _config.get("fused_checkpoint")
    if path is None:
        return None
    state = load_state(Path(path))
    if state.get("precision", process.precision) != process.precision:
        raise ValueError(f"invalid checkpoint {path}: it computed in {state['precision']}, this run in "
                         f"{process.precision}; valid is a checkpoint of this run's precision")
    if state["extra"].get("partial"):
        raise ValueError(f"invalid fused_checkpoint {path}: its group was stopped at step {state['step']}; valid is "
                         "the checkpoint of a finished group (the sweep that stopped it resumes it)")
    process.load_state_dict(state)  # refuses a checkpoint of another config, naming the fields that differ
    print(f"Resuming run {_config['resume']} at step {process.step}" if _config.get("resume") is not None
          else f"Trained in fused group {state['extra']['fused']['group']} (seeds {state['extra']['fused']['seeds']})")
    return state


def provenance(process: DiffusionProcess, resumed_from, fused: bool = False) -> dict:
    """The ``info`` a run starts with (:data:`ablations.record.INFO_KEYS`): identity, precision, inputs' hashes,
    code and environment."""
    return {
        "run_uuid": uuid.uuid4().hex,
        "config_hash": record.config_hash(process.config, process.precision, fused),
        "precision": process.precision,
        "resumed_from": resumed_from,
        "param_count": parameter_breakdown(process.model)["total"],
        "mnist_sha256": dict(MNIST_SHA256),
        "classifier_sha256": weights_sha256(),
        "git": git_state(),
        "environment": run_environment(),
        "pack": int(os.environ.get(record.PACK_ENV, "1")),  # runs sharing the device with this one, itself included
        # the invocation of the sweep that started it (ablations/sweep.py); a run alone: None
        "sitting": json.loads(os.environ[record.SITTING_ENV]) if record.SITTING_ENV in os.environ else None,
        "wall_time_s": {},
    }


def execute(_run, _config: dict) -> dict:
    """Train and evaluate one configuration; return the result dict."""
    config = Config.from_mapping(_config)  # the one Config of this run, passed down whole
    if _config.get("threads"):
        torch.set_num_threads(_config["threads"])
    process = DiffusionProcess(config, precision=_config.get("precision", "auto"))
    resume_state = restored_state(process, _config)
    _run.info.update(provenance(process, _config.get("resume"), _config.get("fused", False)))
    phases = _run.info["wall_time_s"]

    started = time.perf_counter()
    run_training(_run, process, resume_state, _config["checkpoint_every"])
    phases["train"] = time.perf_counter() - started
    if _config.get("fused"):  # trained before this run began, with its group: the group's training time
        _run.info["fused"] = resume_state["extra"]["fused"]
        phases["train"] = _run.info["fused"]["train_s"]

    raise_if_stopped()  # between phases, a stop whose raise was lost (ablations.stopping) is raised again
    samples, metrics = sample_and_evaluate(process, config.seed, phases)
    for key in record.FIDELITY_KEYS:
        _run.log_scalar(f"eval.{key}", metrics[key], config.train_steps)
    _run.info["class_histogram"] = metrics["class_histogram"]
    _run.info["fid_floor"] = real_floor(config.n_samples)  # real vs real at the same N

    raise_if_stopped()
    started = time.perf_counter()
    heldout, series, _run.info["heldout"] = record.heldout_entries(heldout_metrics(process, config.n_samples),
                                                                   config.train_steps)
    phases["heldout"] = time.perf_counter() - started
    for name, (steps, values) in series.items():
        for step, value in zip(steps, values):
            _run.log_scalar(name, value, step)

    raise_if_stopped()
    with tempfile.TemporaryDirectory() as tmp:
        save_artifacts(_run, process, samples, Path(tmp))
    _run.info["peak_rss_mb"] = peak_rss_mb()
    return {key: metrics[key] for key in record.FIDELITY_KEYS} | heldout
