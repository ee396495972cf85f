"""Score stored runs with the held-out metrics, from their stored final weights.

    python -m ablations.rescore --sweep SWEEP_ID [-m URL] [--force]
    python -m ablations.rescore --runs 10,11 [-m URL]

For each COMPLETED run without held-out results (all selected runs with ``--force``; with ``--sweep``, every run
the sweep's report counts, those it found stored by other sweeps included), it loads the
run's final weights from GridFS, computes :func:`core.likelihood.heldout_metrics` at the run's
thread count, and adds to the record, without touching anything else in it: the result keys of
:data:`ablations.record.HELDOUT_KEYS`, their metric series, ``info.heldout``, and ``info.rescored``
(what was added, when, at which commit, with how many threads). Nothing is trained or sampled.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

import gridfs
import torch

from ablations import record, sweep_manifest
from ablations.store import StoreUnavailable, database, mongo_option, resolve
from core.arguments import comma_integers
from core.checkpoint import restore_weights
from core.config import Config
from core.diffusion import DiffusionProcess
from core.likelihood import heldout_metrics
from core.provenance import git_state


def rescore_run(db, doc: dict) -> dict:
    """Compute and store the held-out metrics of one stored run; return its new result values."""
    threads = doc.get("info", {}).get("environment", {}).get("threads")
    if threads:
        torch.set_num_threads(threads)
    config = Config.from_mapping(doc["config"])
    process = DiffusionProcess(config, device="cpu")  # the metrics run in fp32 whatever the run's precision
    restore_weights(process, record.final_weights(gridfs.GridFS(db), doc))
    results, series, info = record.heldout_entries(heldout_metrics(process, config.n_samples), config.train_steps)
    refs = [m for m in doc.get("info", {}).get("metrics", []) if m["name"] not in series]
    for name, (steps, values) in series.items():
        db.metrics.delete_many({"run_id": doc["_id"], "name": name})  # a rescore replaces its own series
        inserted = db.metrics.insert_one({"run_id": doc["_id"], "name": name, "steps": steps, "values": values,
                                          "timestamps": [datetime.now(timezone.utc)] * len(steps)})
        refs.append({"name": name, "id": str(inserted.inserted_id)})
    git = git_state()
    stamp = {"added": list(results) + list(series) + ["info.heldout"], "when": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "commit": git["commit"], "dirty": git["dirty"], "threads": torch.get_num_threads()}
    db.runs.update_one({"_id": doc["_id"]}, {"$set": {**{f"result.{k}": v for k, v in results.items()},
                                                       "info.heldout": info, "info.metrics": refs,
                                                       "info.rescored": stamp}})
    return results


def selected(db, sweep: str | None, runs: list[int] | None, force: bool) -> list[dict]:
    """The COMPLETED runs to score: of ``runs``, or every run ``sweep``'s report counts (its own, and those it found
    stored by other sweeps: :func:`ablations.sweep_manifest.borrowed`); without ``force``, those not yet scored;
    never one whose record holds no final weights (a run imported from a dump).

    :raises ValueError: for a sweep of which the database holds no run and no manifest.
    """
    if sweep:
        sweep_manifest.check_known(db, sweep)
        docs = list(db.runs.find({"status": "COMPLETED", "config.sweep_id": sweep}))
        docs += sweep_manifest.borrowed(db, sweep, docs)  # marked copies: only their _id is written to
    else:
        docs = list(db.runs.find({"status": "COMPLETED", "_id": {"$in": runs}}))
    return sorted((d for d in docs if (force or "nll_bpd" not in (d.get("result") or {})) and
                   record.has_final_weights(d)), key=lambda d: d["_id"])  # a run imported from a dump has none


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablations.rescore", description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--sweep", help="every COMPLETED run that this sweep's report counts, its own and those it "
                       "found stored")
    which.add_argument("--runs", type=comma_integers("runs", "10,11"), help="these run ids, e.g. 10,11")
    parser.add_argument("--force", action="store_true", help="rescore runs that already hold held-out results")
    mongo_option(parser)
    args = parser.parse_args(argv)
    try:
        target = resolve(args.mongo)
        with database(target) as db:
            docs = selected(db, args.sweep, args.runs, args.force)
            print(f"{len(docs)} run(s) to rescore in {target.safe_url} / {target.db_name}")
            for doc in docs:
                results = rescore_run(db, doc)
                print(f"run {doc['_id']:>5}: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
    except (StoreUnavailable, ValueError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
