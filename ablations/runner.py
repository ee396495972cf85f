"""The body of one experiment run: train, evaluate, and record everything an audit needs.

Phases: provenance -> training (with full checkpoints and exact resume) -> sampling -> metrics
-> artifacts. Everything goes through Sacred's ``_run`` (metrics, info, artifacts); the local
checkpoint lives in the run's journal directory.
"""
from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from sacred.observers import FileStorageObserver
from sacred.utils import SacredInterrupt
from torchvision.utils import save_image

from ablations.plan import config_hash
from core.checkpoint import load_state, save_checkpoint
from core.classifier import weights_sha256
from core.config import Config
from core.data import MNIST_SHA256, as_tensor, mnist
from core.diffusion import DiffusionProcess
from core.fidelity import real_floor, sample_and_evaluate, to_uint8
from core.model import parameter_breakdown
from core.seeding import git_state, peak_rss_mb, run_environment
from core.train import train

CHECKPOINT = "checkpoint.pt"
RESULT_KEYS = ("fid", "kid_mean", "kid_std", "precision", "recall", "f_score", "classifier_score")


def journal_dir(_run) -> Path:
    """The run's own directory in the local journal (where its checkpoint is kept)."""
    for observer in _run.observers:
        if isinstance(observer, FileStorageObserver) and observer.dir:
            return Path(observer.dir)
    return Path(tempfile.mkdtemp(prefix="unobserved-run-"))


def config_of(_config: dict) -> Config:
    fields = Config.__dataclass_fields__
    return Config(**{k: v for k, v in _config.items() if k in fields})


class Recorder:
    """Sacred metric logging that also keeps the history, so a resumed run can replay it."""

    def __init__(self, _run, history: list | None = None):
        self._run, self.history = _run, []
        for name, value, step in history or []:
            self(name, value, step)

    def __call__(self, name: str, value: float, step: int) -> None:
        self._run.log_scalar(name, float(value), step)
        self.history.append((name, float(value), int(step)))


def provenance(config: Config, process: DiffusionProcess, resumed_from) -> dict:
    return {
        "run_uuid": uuid.uuid4().hex,
        "config_hash": config_hash(config),  # of the requested config ("auto" device), as sweeps plan it
        "resumed_from": resumed_from,
        "param_count": parameter_breakdown(process.model)["total"],
        "mnist_sha256": dict(MNIST_SHA256),
        "classifier_sha256": weights_sha256(),
        "git": git_state(),
        "environment": run_environment(),
        "wall_time_s": {},
    }


def run_training(_run, process: DiffusionProcess, resume_state: dict | None, checkpoint_every: int) -> None:
    """Train with periodic full checkpoints; on SIGINT/SIGTERM write a final one and re-raise."""
    path = journal_dir(_run) / CHECKPOINT
    extra = (resume_state or {}).get("extra", {})
    record = Recorder(_run, extra.get("history"))
    window = list(extra.get("window", []))

    def checkpoint(current_window):
        save_checkpoint(process, path, extra={"history": record.history, "window": list(current_window)})

    try:
        train(process, as_tensor(mnist(train=True)), log=record, checkpoint=checkpoint,
              checkpoint_every=checkpoint_every, window=window)
    except (KeyboardInterrupt, SacredInterrupt):
        checkpoint(window)
        print(f"Interrupted at step {process.step}; checkpoint in {path}")
        raise


def save_artifacts(_run, process: DiffusionProcess, samples: torch.Tensor, out: Path) -> None:
    grid = out / "samples.png"
    save_image(samples[:64].float().cpu() * 0.5 + 0.5, grid, nrow=8)
    npz = out / "samples.npz"
    np.savez_compressed(npz, samples=to_uint8(samples).numpy())  # (N, 1, 28, 28) uint8
    weights = out / "final_weights.pt"
    torch.save({"config": process.config.to_dict(), "step": process.step, "model": process.model.state_dict(),
                "ema": process.ema_model.state_dict() if process.ema_model is not None else None}, weights)
    for path in (grid, npz, weights):
        _run.add_artifact(str(path), name=path.name)


def execute(_run, _config: dict) -> dict:
    """Train and evaluate one configuration; return the result dict."""
    config = config_of(_config)
    if _config.get("threads"):
        torch.set_num_threads(_config["threads"])
    process = DiffusionProcess.from_config(config)
    resume_state = None
    if _config.get("resume") is not None:
        resume_state = load_state(Path(_config["resume_checkpoint"]))
        process.load_state_dict(resume_state)
        print(f"Resuming run {_config['resume']} at step {process.step}")
    _run.info.update(provenance(config, process, _config.get("resume")))
    phases = _run.info["wall_time_s"]

    started = time.perf_counter()
    run_training(_run, process, resume_state, _config["checkpoint_every"])
    phases["train"] = time.perf_counter() - started

    samples, metrics = sample_and_evaluate(process, config.seed, phases)
    for key in RESULT_KEYS:
        _run.log_scalar(f"eval.{key}", metrics[key], config.train_steps)
    _run.info["class_histogram"] = metrics["class_histogram"]
    _run.info["fid_floor"] = real_floor(config.n_samples)  # real vs real at the same N

    with tempfile.TemporaryDirectory() as tmp:
        save_artifacts(_run, process, samples, Path(tmp))
    _run.info["peak_rss_mb"] = peak_rss_mb()
    return {key: metrics[key] for key in RESULT_KEYS}
