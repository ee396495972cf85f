"""What a run record holds: the one place that names its parts.

A run record is what Sacred stores for one run of ``ablations/run.py`` (a document in MongoDB's
``runs`` collection, or a directory of the local journal), plus its metric series and artifacts:

- ``config``: the :class:`core.config.Config` fields, flat (one column each in Omniboard), and the
  run options of ``ablations/run.py`` (scale, threads, sweep_id, cell, ...).
- ``info``: :data:`INFO_KEYS`, written by :mod:`ablations.runner` (its ``provenance`` first).
- ``result``: :data:`RESULT_KEYS`, also logged as the metrics ``eval.<key>``; :data:`METRICS` lists
  every metric series.
- artifacts: :data:`ARTIFACTS`; the final weights are in the format of :func:`core.checkpoint.save_weights`.
- :data:`IMPORTED`, only on a run loaded from a dump: the artifacts the dump did not carry.

Every stored value is plain JSON (strings, numbers, booleans, None, lists, dicts): :func:`non_plain`
finds what is not. The toggles that the ablations flip, a record's identity (:func:`config_hash`)
and the staleness rule live here too, so that the sweeps, the sync and the analysis agree.
"""
from __future__ import annotations

import difflib
import hashlib
import json
from typing import TYPE_CHECKING

import gridfs

from core.config import Config

if TYPE_CHECKING:  # torch stays out: the store's commands (status, sync, stop) read records, never weights
    from core.precision import Precision

# Each toggle and its ablation value; the seed's value is Config's default. A scale's baseline may hold the
# ablation value instead (the `gpu` scale's EMA, where only EMA weights draw digits in its budget): its cell
# then flips the toggle back to the seed's value (flipped_value).
TOGGLES: dict[str, object] = {"attention": False, "ema": True, "dropout": 0.1, "schedule": "linear", "amp": False}

FIDELITY_KEYS = ("fid", "kid_mean", "kid_std", "precision", "recall", "f_score", "classifier_score")
HELDOUT_KEYS = ("nll_bpd", "nll_bpd_se", "eps_mse", "x0_mse")  # core.likelihood.heldout_metrics
RESULT_KEYS = FIDELITY_KEYS + HELDOUT_KEYS
TRAIN_METRICS = ("train.loss", "train.images_per_s")
LEVEL_METRICS = ("heldout.eps_mse", "heldout.x0_mse")  # step i: the i-th log-SNR level of info.heldout.log_snr
METRICS = TRAIN_METRICS + tuple(f"eval.{key}" for key in RESULT_KEYS) + LEVEL_METRICS
INFO_KEYS = ("run_uuid", "config_hash", "precision", "resumed_from", "param_count", "mnist_sha256",
             "classifier_sha256", "git", "environment", "pack", "wall_time_s", "class_histogram", "fid_floor",
             "heldout", "peak_rss_mb", "rescored", "fused", "sitting")

# The run options of ``ablations/run.py``, stored in a record's ``config`` beside the Config fields, with defaults.
RUN_OPTIONS = {
    "scale": "small",  # which named scale the training and evaluation budget came from
    "threads": 0,  # torch threads; 0 keeps torch's default. Part of bitwise reproducibility.
    "precision": "auto",  # what amp computes in: "auto" (fp16 on CUDA, bf16 on an AMX CPU, else fp32) or forced
    "checkpoint_every": 100,  # steps between full checkpoints in the run's journal directory
    "resume": None,  # id of an interrupted run to continue from its last checkpoint
    "resume_checkpoint": None,  # filled in from `resume`; not set by hand
    "fused": False,  # trained as one network with its fused group (sweep.py --fuse): part of its identity
    "fused_checkpoint": None,  # set by sweep.py --fuse: this seed's checkpoint from ablations/fused_group.py
    "sweep_id": None,  # set by ablations/sweep.py: which sweep this run belongs to
    "cell": None,  # set by ablations/sweep.py: the plan cell (e.g. "baseline", "attention")
}
CONFIG_KEYS = frozenset(Config.__dataclass_fields__) | frozenset(RUN_OPTIONS)


def check_config_keys(keys) -> None:
    """Refuse, before any work, ``key=value`` words whose key a run's config does not have (Sacred would refuse
    them only once the run starts, without naming the valid ones)."""
    if unknown := [key for key in keys if key not in CONFIG_KEYS]:
        near = {key: difflib.get_close_matches(key, CONFIG_KEYS, n=1) for key in unknown}
        hints = "".join(f" ({key}: did you mean {near[key][0]}?)" for key in unknown if near[key])
        raise ValueError(f"invalid config key(s) {', '.join(unknown)}{hints}: valid keys are the Config fields "
                         f"{', '.join(sorted(Config.__dataclass_fields__))} and the run options "
                         f"{', '.join(RUN_OPTIONS)}")


SAMPLE_GRID, SAMPLES, FINAL_WEIGHTS = "samples.png", "samples.npz", "final_weights.pt"
ARTIFACTS = (SAMPLE_GRID, SAMPLES, FINAL_WEIGHTS)
# Set by `sweep.py --pack K` for its run processes; recorded as ``info.pack`` (wall times of packed runs
# include waiting for the device).
PACK_ENV = "ABLATIONS_PACK"
# Set by `sweep.py` for its run processes: the sweep's invocation (a JSON object: id, started, host, pack,
# mps, fuse), recorded as ``info.sitting``, so that a suite's wall time, start-up included, is in its records.
SITTING_ENV = "ABLATIONS_SITTING"
CHECKPOINT = "checkpoint.pt"  # the full checkpoint, kept in the run's journal directory (not an artifact)
# Set on a run loaded from a dump (``python -m analysis.runs import``), which carries the sample grid alone:
# ``{"without": [the artifacts the dump did not carry]}``. The audit does not count those as missing.
IMPORTED = "imported"

# A RUNNING run whose heartbeat is older than this is dead: the audit flags it, the sync stores it
# as it is. Omniboard calls such a run PROBABLY_DEAD after the same 2 minutes.
STALE_AFTER_S = 120
# What a run executes: uncommitted changes elsewhere (tests, docs, benchmarks) cannot change its result.
RUN_CODE = ("core/", "ablations/", "pyproject.toml", "requirements.lock")


def seed_value(toggle: str) -> object:
    """The seed design's value of a toggle: its :class:`core.config.Config` default."""
    return Config.__dataclass_fields__[toggle].default


def flipped_value(toggle: str, baseline: Config) -> object:
    """The value that a cell flipping ``toggle`` gives it: the ablation value, or the seed's value where
    ``baseline`` already holds the ablation value (every cell then differs from its baseline)."""
    ablation = TOGGLES[toggle]
    return seed_value(toggle) if getattr(baseline, toggle) == ablation else ablation


# Config fields added after runs were stored, with the value those runs computed with: out of the identity there.
LATER_FIELDS = {"sampler_eta": 0.0, "lr_schedule": "constant"}


def config_hash(config: Config, precision: Precision, fused: bool = False) -> str:
    """Identity of a configuration x seed x precision (``info.config_hash``), canonically serialised.

    The precision enters unless it is what the CPU runs stored before it was recorded computed in
    (fp32 without AMP, bf16 with it), and a field added since (:data:`LATER_FIELDS`) only where it is not
    its default, so that those runs keep their hash and sweeps still find them. A run trained in a fused
    group (``fused``, see :mod:`core.fused`) equals its solo twin only up to rounding: it is another cell.
    """
    identity = {k: v for k, v in config.to_dict().items() if k not in LATER_FIELDS or v != LATER_FIELDS[k]}
    if precision != ("bf16" if config.amp else "fp32"):
        identity["precision"] = precision
    if fused:
        identity["fused"] = True
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def precision_of(doc: dict) -> Precision:
    """The precision a stored run computed in: ``info.precision``, or for a record from before it was
    recorded, what ``amp`` meant then on its device (bf16 on a CPU, fp16 on CUDA)."""
    info = doc.get("info", {})
    if "precision" in info:
        return info["precision"]
    if not doc.get("config", {}).get("amp"):
        return "fp32"
    return "bf16" if info.get("environment", {}).get("device_name", "cpu") == "cpu" else "fp16"


def heldout_entries(heldout: dict, step: int) -> tuple[dict, dict[str, tuple[list, list]], dict]:
    """What the held-out metrics add to a record: result values, metric series (name -> (steps, values)),
    and ``info.heldout`` (the levels' log-SNR and timesteps, the numbers of images, the seed).

    :param step: the step the ``eval.*`` points are logged at (the run's last training step).
    """
    results = {key: heldout[key] for key in HELDOUT_KEYS}
    levels = heldout["levels"]
    series = {f"eval.{key}": ([step], [value]) for key, value in results.items()}
    series |= {f"heldout.{key}": (list(range(len(levels[key]))), levels[key]) for key in ("eps_mse", "x0_mse")}
    info = {"log_snr": levels["log_snr"], "timesteps": levels["timesteps"], "images": heldout["images"],
            "seed": heldout["seed"]}
    return results, series, info


def dirty_run_code(git: dict) -> bool:
    """Whether a record's uncommitted changes could touch what a run executes (:data:`RUN_CODE`).

    A dirty record without the list of changed files (older runs) counts as dirty.
    """
    if not git.get("dirty"):
        return False
    changed = git.get("changed")
    return not changed or any(path.startswith(RUN_CODE) for path in changed)


def has_final_weights(doc: dict) -> bool:
    """Whether a run record holds its final weights (one imported from a dump does not)."""
    return any(a["name"] == FINAL_WEIGHTS for a in doc.get("artifacts", []))


def final_weights(fs: gridfs.GridFS, doc: dict) -> dict:
    """A stored run's final weights (``config``, ``step``, ``model``, ``ema``), read from GridFS."""
    from core.checkpoint import load_weights  # imports torch, which only the readers of weights need

    file_id = next(a["file_id"] for a in doc.get("artifacts", []) if a["name"] == FINAL_WEIGHTS)
    return load_weights(fs.get(file_id).read())


def non_plain(value, path: str = "") -> list[str]:
    """Paths inside ``value`` that are not plain JSON: pickled objects (``py/...`` keys) or other types."""
    if isinstance(value, dict):
        found = [f"{path}.{k}" for k in value if str(k).startswith("py/")]
        return found or [p for k, v in value.items() for p in non_plain(v, f"{path}.{k}")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in non_plain(v, f"{path}[{i}]")]
    return [] if value is None or isinstance(value, (str, int, float, bool)) else [f"{path} ({type(value).__name__})"]
