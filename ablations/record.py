"""What a run record holds: the one place that names its parts.

A run record is what Sacred stores for one run of ``ablations/run.py`` (a document in MongoDB's
``runs`` collection, or a directory of the local journal), plus its metric series and artifacts:

- ``config``: the :class:`core.config.Config` fields, flat (one column each in Omniboard), and the
  run options of ``ablations/run.py`` (scale, threads, sweep_id, cell, ...).
- ``info``: :data:`INFO_KEYS`, written by :func:`provenance` and the runner.
- ``result``: :data:`RESULT_KEYS`, also logged as the metrics ``eval.<key>``; :data:`METRICS` lists
  every metric series.
- artifacts: :data:`ARTIFACTS`; the final weights are in the format of :func:`core.checkpoint.save_weights`.

Every stored value is plain JSON (strings, numbers, booleans, None, lists, dicts): :func:`non_plain`
finds what is not. The toggles that the ablations flip, a record's identity (:func:`config_hash`)
and the staleness rule live here too, so that the sweeps, the sync and the analysis agree.
"""
from __future__ import annotations

import hashlib
import json
import uuid

import gridfs

from core.checkpoint import load_weights
from core.classifier import weights_sha256
from core.config import Config
from core.data import MNIST_SHA256
from core.model import parameter_breakdown
from core.provenance import git_state, run_environment

# Each toggle and its flipped (ablation) value; the baseline is Config's default, the seed's choice.
TOGGLES: dict[str, object] = {"attention": False, "ema": True, "dropout": 0.1, "schedule": "linear", "amp": False}

RESULT_KEYS = ("fid", "kid_mean", "kid_std", "precision", "recall", "f_score", "classifier_score")
TRAIN_METRICS = ("train.loss", "train.images_per_s")
METRICS = TRAIN_METRICS + tuple(f"eval.{key}" for key in RESULT_KEYS)
INFO_KEYS = ("run_uuid", "config_hash", "resumed_from", "param_count", "mnist_sha256", "classifier_sha256",
             "git", "environment", "wall_time_s", "class_histogram", "fid_floor", "peak_rss_mb")

SAMPLE_GRID, SAMPLES, FINAL_WEIGHTS = "samples.png", "samples.npz", "final_weights.pt"
ARTIFACTS = (SAMPLE_GRID, SAMPLES, FINAL_WEIGHTS)
CHECKPOINT = "checkpoint.pt"  # the full checkpoint, kept in the run's journal directory (not an artifact)

# A RUNNING run whose heartbeat is older than this is dead: the audit flags it, the sync stores it
# as it is. Omniboard calls such a run PROBABLY_DEAD after the same 2 minutes.
STALE_AFTER_S = 120
# What a run executes: uncommitted changes elsewhere (tests, docs, benchmarks) cannot change its result.
RUN_CODE = ("core/", "ablations/", "pyproject.toml", "requirements.lock")


def config_hash(config: Config) -> str:
    """Identity of a configuration x seed (``info.config_hash``): every Config field, canonically serialised."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def provenance(config: Config, process, resumed_from) -> dict:
    """The ``info`` a run starts with: identity, inputs' hashes, code and environment."""
    return {
        "run_uuid": uuid.uuid4().hex,
        "config_hash": config_hash(config),
        "resumed_from": resumed_from,
        "param_count": parameter_breakdown(process.model)["total"],
        "mnist_sha256": dict(MNIST_SHA256),
        "classifier_sha256": weights_sha256(),
        "git": git_state(),
        "environment": run_environment(),
        "wall_time_s": {},
    }


def dirty_run_code(git: dict) -> bool:
    """Whether a record's uncommitted changes could touch what a run executes (:data:`RUN_CODE`).

    A dirty record without the list of changed files (older runs) counts as dirty.
    """
    if not git.get("dirty"):
        return False
    changed = git.get("changed")
    return not changed or any(path.startswith(RUN_CODE) for path in changed)


def final_weights(fs: gridfs.GridFS, doc: dict) -> dict:
    """A stored run's final weights (``config``, ``step``, ``model``, ``ema``), read from GridFS."""
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
