"""Re-execute a stored run from its config and seed, and compare it with what was stored; re-sample a
stored run's final weights under other sampler seeds; or load them to sample from (:func:`load_run`).

Training, sampling and evaluation go through the same core calls as ``ablations/runner.py``
(checkpointing there draws no random numbers), at the run's recorded thread count. A run trained
in a fused group (``sweep.py --fuse``) is re-trained with its whole group, as it was.
"""
from __future__ import annotations

import gridfs
import numpy as np
import torch

from ablations.fused_group import members_of, trained_group
from ablations.plan import planned_precision
from ablations.record import IMPORTED, dirty_run_code, final_weights, has_final_weights, precision_of
from core.checkpoint import restore_weights
from core.config import Config
from core.data import as_tensor, mnist
from core.diffusion import DiffusionProcess
from core.evaluation import sample_and_evaluate
from core.likelihood import heldout_metrics
from core.provenance import cpu_model, git_state, package_versions
from core.train import train

COMPARED = ("fid", "kid_mean", "precision", "recall", "nll_bpd", "eps_mse")  # those a record holds


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
    return precision_refusal(doc)


def recorded_versions(doc: dict) -> dict[str, str]:
    """The package versions a run recorded; older records hold torch's alone (pickled, in the oldest)."""
    env = doc.get("info", {}).get("environment", {})
    if "packages" in env:
        return env["packages"]
    torch_version = env.get("torch")
    if isinstance(torch_version, dict):  # a pickled TorchVersion: {"py/newargs": {"py/tuple": ["2.14.1+cu130"]}}
        torch_version = torch_version.get("py/newargs", {}).get("py/tuple", [None])[0]
    return {"torch": torch_version.split("+")[0]} if torch_version else {}


def environment_differences(doc: dict) -> list[str]:
    """'WHAT RECORDED in the run, FOUND here' for each package version, and the CPU, that differ from the run's."""
    recorded = recorded_versions(doc)
    here = package_versions(tuple(recorded))
    differences = [f"{name} {version} in the run, {here[name]} here" for name, version in recorded.items()
                   if here[name] != version]
    cpu = doc.get("info", {}).get("environment", {}).get("cpu")
    if cpu and cpu != cpu_model():
        differences.append(f"CPU {cpu!r} in the run, {cpu_model()!r} here")
    return differences


def warn_about_environment(doc: dict, log) -> None:
    if differences := environment_differences(doc):
        log(f"NOTE: this environment differs from the run's ({'; '.join(differences)}): bitwise equality is "
            "not expected. `make install` installs the versions pinned in requirements.lock.")


def precision_refusal(doc: dict) -> str | None:
    """Why this machine cannot compute in the run's precision, naming both, or None."""
    config, recorded = Config.from_mapping(doc["config"]), precision_of(doc)
    try:
        planned_precision(config, recorded)
    except ValueError:
        return (f"the run computed in {recorded}, which this machine cannot run; here it would compute in "
                f"{planned_precision(config)}, and runs of different precisions are not compared")
    return None


def stored_process(doc: dict) -> DiffusionProcess:
    """A fresh process of the stored run's config, in its precision, at its recorded thread count."""
    threads = doc.get("info", {}).get("environment", {}).get("threads")
    if threads:
        torch.set_num_threads(threads)
    return DiffusionProcess(Config.from_mapping(doc["config"]), precision=precision_of(doc))


def trained_again(doc: dict) -> tuple[DiffusionProcess, list[float]]:
    """The stored run trained afresh, and its loss curve: alone, or with its whole group where it was
    trained in a fused group (``info.fused``), since its last bits depend on the group's kernels."""
    process, losses = stored_process(doc), []
    fused = doc.get("info", {}).get("fused")
    if not fused:
        train(process, as_tensor(mnist(train=True)),
              log=lambda name, value, step: losses.append(float(value)) if name == "train.loss" else None)
        return process, losses
    group = members_of(fused, process.config)
    me = group.index((process.config.seed, process.config.schedule))
    members, _ = trained_group(process.config, group, process.precision, log=lambda i, name, value, step:
                               losses.append(float(value)) if (i, name) == (me, "train.loss") else None)
    return members[me], losses


def re_execute(doc: dict) -> tuple[dict, list[float], dict]:
    """(final model weights, training-loss curve, result) of a fresh execution of the stored config."""
    process, losses = trained_again(doc)
    config = process.config
    _, metrics = sample_and_evaluate(process, config.seed)
    if "nll_bpd" in doc.get("result", {}):
        metrics |= heldout_metrics(process, config.n_samples)
    return process.model.state_dict(), losses, metrics


def checked_run(db, run_id: int, verb: str, refused, log=print) -> dict:
    """The stored run ``run_id``, COMPLETED, with no reason ``refused(doc)`` against ``verb``-ing it here (a
    difference of environment is logged, not refused).

    :raises ValueError: saying why, for a run missing, not COMPLETED or refused.
    """
    doc = db.runs.find_one({"_id": run_id})
    if doc is None or doc.get("status") != "COMPLETED":
        raise ValueError(f"run {run_id} is {'missing' if doc is None else doc.get('status')}: only "
                         f"COMPLETED runs {verb}")
    if not has_final_weights(doc):
        raise ValueError(f"cannot {verb} run {run_id}: its record holds no final weights" + (
            " (imported from a dump, which does not carry them; the database it came from holds them)"
            if IMPORTED in doc else ""))
    if reason := refused(doc):
        raise ValueError(f"cannot {verb} run {run_id} here: {reason}")
    warn_about_environment(doc, log)
    return doc


def with_final_weights(db, doc: dict) -> DiffusionProcess:
    """:func:`stored_process` of the stored run ``doc``, with its final weights (and EMA weights) restored."""
    process = stored_process(doc)
    restore_weights(process, final_weights(gridfs.GridFS(db), doc))
    return process


def load_run(db, run_id: int, log=print) -> DiffusionProcess:
    """A stored run's model, ready to sample from (in a notebook: README, "Analysis, report and audit"): its
    config, precision and thread count, its final weights. Any checkout may load it; nothing is trained.

    :raises ValueError: for a run missing, not COMPLETED, or computed in a precision this machine cannot run.
    """
    return with_final_weights(db, checked_run(db, run_id, "load", precision_refusal, log))


def largest_difference(a: dict, b: dict) -> float:
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(a.values(), b.values()))


def reproduce(db, run_id: int, log=print) -> int:
    """Exit code: 0 when weights, loss curve and metrics are bitwise equal; 1 when not; 2 when refused."""
    try:
        doc = checked_run(db, run_id, "reproduce", refusal, log)
    except ValueError as refused:
        log(f"REFUSED: {refused}")
        return 2
    log(f"Re-executing run {run_id} ({doc['config'].get('cell') or 'custom'}, seed {doc['config']['seed']}, "
        f"{precision_of(doc)}) ...")
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
    for key in (k for k in COMPARED if k in doc["result"]):  # runs from before the held-out metrics lack them
        checks[key] = (result[key] == doc["result"][key], abs(result[key] - doc["result"][key]))
    for name, (equal, diff) in checks.items():
        log(f"  {name:<14} {'bitwise equal' if equal else f'DIFFERS (largest difference {diff:.3g})'}")
    ok = all(equal for equal, _ in checks.values())
    log(f"run {run_id} {'REPRODUCES bit for bit' if ok else 'does NOT reproduce'}")
    return 0 if ok else 1


def resample(db, run_id: int, seeds: list[int], log=print) -> int:
    """Score a stored run's final weights under other sampler seeds: how much of its FID is sampling noise.

    Nothing is trained, so any checkout may do it; with the run's own seed the metrics must equal the
    stored ones, which checks that this checkout samples as the run's did.

    :return: exit code, 0 when the run's own seed (if among ``seeds``) gives the stored FID, 1 when not, 2
        when the run cannot be re-sampled.
    """
    try:
        doc = checked_run(db, run_id, "resample", precision_refusal, log)
    except ValueError as refused:
        log(f"REFUSED: {refused}")
        return 2
    process = with_final_weights(db, doc)
    config, fids, ok = process.config, [], True
    log(f"run {run_id} ({doc['config'].get('cell') or 'custom'}, seed {config.seed}): {config.n_samples} "
        f"{config.sampler} samples per sampler seed")
    for seed in seeds:
        _, metrics = sample_and_evaluate(process, seed)
        fids.append(metrics["fid"])
        note = ""
        if seed == config.seed:
            same = metrics["fid"] == doc["result"]["fid"]
            ok, note = same, "  (the run's own seed: " + ("equal to the stored fid)" if same else
                                                          f"DIFFERS from the stored {doc['result']['fid']:.6g})")
        log(f"  sampler seed {seed:>4}  fid {metrics['fid']:9.2f}  recall {metrics['recall']:.3f}{note}")
    if len(fids) > 1:
        log(f"  over {len(fids)} sampler seeds: mean fid {np.mean(fids):.1f}, SD {np.std(fids, ddof=1):.1f}")
    return 0 if ok else 1
