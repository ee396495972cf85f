"""Re-execute a stored run from its config and seed, and compare it with what was stored.

Training, sampling and evaluation go through the same core calls as ``ablations/runner.py``
(checkpointing there draws no random numbers), at the run's recorded thread count.
"""
from __future__ import annotations

import gridfs
import torch

from analysis.audit import final_weights
from core.config import Config
from core.data import as_tensor, mnist
from core.diffusion import DiffusionProcess
from core.fidelity import evaluate
from core.seeding import dirty_run_code, git_state
from core.train import train

COMPARED = ("fid", "kid_mean", "precision", "recall")


def refusal(doc: dict) -> str | None:
    """Why the working tree cannot reproduce this run, or None."""
    recorded, here = doc.get("info", {}).get("git", {}), git_state()
    if not recorded.get("commit"):
        return "the run recorded no git commit"
    if dirty_run_code(recorded):
        return "the run was made from a dirty working tree: its exact code is unknown"
    if here["commit"] != recorded["commit"] or dirty_run_code(here):
        return (f"the working tree ({here['commit']}{', dirty' if here['dirty'] else ''}) is not the recorded "
                f"commit {recorded['commit']}: check it out (git checkout {recorded['commit'][:10]}) and rerun")
    return None


def re_execute(doc: dict) -> tuple[dict, list[float], dict]:
    """(final model weights, training-loss curve, result) of a fresh execution of the stored config."""
    config = Config(**{k: v for k, v in doc["config"].items() if k in Config.__dataclass_fields__})
    threads = doc.get("info", {}).get("environment", {}).get("threads")
    if threads:
        torch.set_num_threads(threads)
    process = DiffusionProcess.from_config(config)
    losses = []
    train(process, as_tensor(mnist(train=True)),
          log=lambda name, value, step: losses.append(float(value)) if name == "train.loss" else None)
    samples = process.sample(config.n_samples, sampler=config.sampler, steps=config.sampler_steps, seed=config.seed)
    return process.model.state_dict(), losses, evaluate(samples, reference="test")


def largest_difference(a: dict, b: dict) -> float:
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(a.values(), b.values()))


def reproduce(db, run_id: int, log=print) -> int:
    """Exit code: 0 when weights, loss curve and metrics are bitwise equal; 1 when not; 2 when refused."""
    doc = db.runs.find_one({"_id": run_id})
    if doc is None or doc.get("status") != "COMPLETED":
        log(f"ERROR: run {run_id} is {'missing' if doc is None else doc.get('status')}: only COMPLETED runs reproduce")
        return 2
    if reason := refusal(doc):
        log(f"REFUSED to reproduce run {run_id}: {reason}")
        return 2
    log(f"Re-executing run {run_id} ({doc['config'].get('cell') or 'custom'}, seed {doc['config']['seed']}) ...")
    weights, losses, result = re_execute(doc)
    stored_weights = final_weights(gridfs.GridFS(db), doc)["model"]
    stored_losses = db.metrics.find_one({"run_id": run_id, "name": "train.loss"})["values"]
    checks = {
        "final weights": (all(torch.equal(a, b) for a, b in zip(weights.values(), stored_weights.values())),
                          largest_difference(weights, stored_weights)),
        "loss curve": (losses == stored_losses,
                       max((abs(a - b) for a, b in zip(losses, stored_losses)), default=float("inf"))
                       if len(losses) == len(stored_losses) else float("inf")),
    }
    for key in COMPARED:
        checks[key] = (result[key] == doc["result"][key], abs(result[key] - doc["result"][key]))
    for name, (equal, diff) in checks.items():
        log(f"  {name:<14} {'bitwise equal' if equal else f'DIFFERS (largest difference {diff:.3g})'}")
    ok = all(equal for equal, _ in checks.values())
    log(f"run {run_id} {'REPRODUCES bit for bit' if ok else 'does NOT reproduce'}")
    return 0 if ok else 1
