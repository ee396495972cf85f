"""Check stored runs, and re-execute one to prove that it reproduces.

    python analysis/audit.py [-m URL] [--sweep ID]
    python analysis/audit.py --reproduce RUN_ID [-m URL]
    python analysis/audit.py --resample RUN_ID [--seeds 0,1,2] [-m URL]

The audit checks every run's status (and heartbeat freshness while RUNNING), completeness (every
expected metric and artifact, a final checkpoint that loads), provenance (a commit, a clean tree,
the current data and classifier hashes), consistency (the config hashes to the identity the record holds,
each result equals the last point of its metric series, the class histogram counts the samples: a record
edited after its run fails these), duplicate cells and orphan artifacts; with ``--sweep``, also
that every cell x seed the sweep planned has a COMPLETED run (its own, or one it found stored by another
sweep). It prints a table and exits non-zero on any problem. ``--reproduce`` re-executes a run from its
stored config and seed at its recorded thread count, refusing when the working tree is not the
recorded commit. ``--resample`` scores the run's stored weights under other sampler seeds: the part of a FID's
spread that is sampling noise (the rest is the training seed's).
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections import Counter

import gridfs

from ablations.record import (ARTIFACTS, FINAL_WEIGHTS, IMPORTED, METRICS, RESULT_KEYS, STALE_AFTER_S,
                              config_hash, dirty_run_code, final_weights, non_plain, precision_of)
from ablations.store import StoreUnavailable, database, mongo_option  # URLs and the server only
from ablations.sweep_manifest import check_known, unfinished
from core.arguments import comma_integers, integer_at_least
from core.classifier import expected_sha256
from core.config import Config
from core.data import MNIST_SHA256


def check_status(doc: dict, now: dt.datetime, superseded: bool) -> list[str]:
    status = doc.get("status")
    if status == "RUNNING":
        age = (now - (doc.get("heartbeat") or doc["start_time"])).total_seconds()
        return [f"RUNNING with a stale heartbeat ({age:.0f} s old)"] if age > STALE_AFTER_S else []
    if status in ("FAILED", "INTERRUPTED", "TIMEOUT") and not superseded:
        return [f"{status} and not resumed or rerun to completion"]
    return []


def check_complete(db, fs, doc: dict) -> list[str]:
    if doc.get("status") != "COMPLETED":
        return []
    problems = []
    names = {m["name"] for m in db.metrics.find({"run_id": doc["_id"]}, {"name": 1})}
    if missing := sorted(set(METRICS) - names):
        problems.append(f"missing metrics {missing}")
    not_carried = set(doc.get(IMPORTED, {}).get("without", []))  # left out of its dump: not lost
    if missing := sorted(set(ARTIFACTS) - not_carried - {a["name"] for a in doc.get("artifacts", [])}):
        problems.append(f"missing artifacts {missing}")
    elif FINAL_WEIGHTS not in not_carried:
        try:
            assert final_weights(fs, doc)["model"]
        except Exception as exc:  # any failure to load is the finding itself
            problems.append(f"final checkpoint does not load: {type(exc).__name__}: {exc}")
    return problems


def check_provenance(doc: dict) -> list[str]:
    info, problems = doc.get("info", {}), []
    git = info.get("git", {})
    if not git.get("commit"):
        problems.append("no recorded git commit")
    if dirty_run_code(git):
        changed = git.get("changed")
        problems.append("run from a dirty working tree (uncommitted changes"
                        + (f" to {', '.join(changed)})" if changed else "; which files was not recorded)"))
    if info.get("mnist_sha256") != MNIST_SHA256:
        problems.append("MNIST hashes differ from the current data")
    if info.get("classifier_sha256") != expected_sha256():
        problems.append("classifier hash differs from the shipped classifier")
    if pickled := [p for part in ("config", "info", "result") for p in non_plain(doc.get(part), part)]:
        problems.append(f"values that are not plain JSON at {', '.join(pickled[:3])}")
    return problems


def check_consistency(db, doc: dict) -> list[str]:
    """Whether a COMPLETED record agrees with itself: its config hashes to its ``info.config_hash`` (the identity
    by which sweeps find it stored), each result equals the last point of its ``eval.<key>`` series (a
    missing series is :func:`check_complete`'s finding), and its class histogram counts its samples."""
    info, result, problems = doc.get("info", {}), doc.get("result") or {}, []
    try:
        fused = bool(doc["config"].get("fused"))
        recomputed = config_hash(Config.from_mapping(doc["config"]), precision_of(doc), fused)
    except ValueError as exc:  # a config no run can have: the finding itself
        problems.append(f"config is not valid: {exc}")
    else:
        if recomputed != info.get("config_hash"):
            problems.append(f"info.config_hash {info.get('config_hash')} is not its config's hash {recomputed}")
    series = {m["name"]: m["values"] for m in db.metrics.find({"run_id": doc["_id"], "name": {
        "$in": [f"eval.{key}" for key in RESULT_KEYS]}}, {"name": 1, "values": 1})}
    for key in (k for k in RESULT_KEYS if k in result and series.get(f"eval.{k}")):
        last = series[f"eval.{key}"][-1]
        if last != result[key] and not (last != last and result[key] != result[key]):  # NaN equals NaN here
            problems.append(f"result.{key} {result[key]!r} differs from its series' last point {last!r}")
    histogram, n = info.get("class_histogram"), doc["config"].get("n_samples")
    if histogram is not None and sum(histogram) != n:
        problems.append(f"info.class_histogram counts {sum(histogram)} samples, not the config's n_samples={n}")
    return problems


def audit(db, sweep: str | None = None, now: dt.datetime | None = None) -> list[dict]:
    """One row per run: id, status, cell, seed and the list of problems found."""
    now = now or dt.datetime.utcnow()
    fs = gridfs.GridFS(db)
    docs = list(db.runs.find({"config.sweep_id": sweep} if sweep else {}, sort=[("_id", 1)]))
    completed = Counter((d["config"].get("sweep_id"), d.get("info", {}).get("config_hash"))
                        for d in docs if d.get("status") == "COMPLETED")
    rows = []
    for doc in docs:
        key = (doc["config"].get("sweep_id"), doc.get("info", {}).get("config_hash"))
        problems = check_status(doc, now, superseded=completed[key] > 0) + check_complete(db, fs, doc)
        problems += check_provenance(doc) + check_consistency(db, doc) if doc.get("status") == "COMPLETED" else []
        if doc.get("status") == "COMPLETED" and key[0] and completed[key] > 1:
            problems.append(f"duplicate cell: {completed[key]} COMPLETED runs of this config in the sweep")
        rows.append({"run_id": doc["_id"], "status": doc.get("status"), "cell": doc["config"].get("cell"),
                     "seed": doc["config"].get("seed"), "problems": problems})
    rows += unfinished_cells(db, sweep) if sweep else []
    referenced = {a["file_id"] for d in db.runs.find({}, {"artifacts": 1}) for a in d.get("artifacts", [])}
    orphans = [f.filename for f in fs.find({"filename": {"$regex": "^artifact://"}}) if f._id not in referenced]
    if orphans:
        rows.append({"run_id": "-", "status": "-", "cell": "-", "seed": "-",
                     "problems": [f"{len(orphans)} orphan artifact(s), e.g. {orphans[0]}"]})
    return rows


def unfinished_cells(db, sweep: str) -> list[dict]:
    """A row for each cell x seed of the sweep's manifest that no COMPLETED run holds."""
    return [{"run_id": "-", "status": "-", "cell": entry["cell"], "seed": entry["seed"],
             "problems": ["planned by the sweep, and no COMPLETED run of it is stored"]}
            for entry in unfinished(db, sweep)]


def print_rows(rows: list[dict]) -> None:
    print(f"{'run':>5}  {'status':<12}{'cell':<24}{'seed':>5}  problems")
    for r in rows:
        print(f"{r['run_id']!s:>5}  {r['status']!s:<12}{r['cell']!s:<24}{r['seed']!s:>5}  "
              f"{'; '.join(r['problems']) or 'ok'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python analysis/audit.py", description=__doc__.splitlines()[0])
    mongo_option(parser)
    what = parser.add_mutually_exclusive_group()  # one thing at a time: a second was ignored without a word
    what.add_argument("--sweep", help="only this sweep id")
    what.add_argument("--reproduce", type=integer_at_least("--reproduce"), metavar="RUN_ID",
                      help="re-execute this run and compare")
    what.add_argument("--resample", type=integer_at_least("--resample"), metavar="RUN_ID",
                      help="score this run's stored weights under other sampler seeds (see --seeds)")
    parser.add_argument("--seeds", type=comma_integers("seeds"), help="sampler seeds for --resample (default 0,1,2)")
    args = parser.parse_args(argv)
    if args.seeds is not None and args.resample is None:
        parser.error(f"invalid --seeds {','.join(map(str, args.seeds))} without --resample: the sampler seeds are "
                     "for --resample RUN_ID only")
    args.seeds = args.seeds or [0, 1, 2]
    try:
        with database(args.mongo) as db:
            return run_command(db, args)
    except (ValueError, StoreUnavailable) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2


def run_command(db, args) -> int:
    """Reproduce, resample, or audit (the whole database, or one known sweep) and print its table."""
    if args.reproduce is not None:
        from analysis.reproduce import reproduce

        return reproduce(db, args.reproduce)
    if args.resample is not None:
        from analysis.reproduce import resample

        return resample(db, args.resample, args.seeds)
    if args.sweep:
        check_known(db, args.sweep)
    rows = audit(db, args.sweep)
    print_rows(rows)
    bad = sum(bool(r["problems"]) for r in rows)
    print(f"{len(rows)} rows, {bad} with problems")
    if imported := db.runs.count_documents({IMPORTED: {"$exists": True}} | ({"config.sweep_id": args.sweep}
                                                                           if args.sweep else {})):
        print(f"{imported} run(s) imported from a dump, which carries no final weights or samples: their "
              "checkpoints were not checked here (the database they came from holds them)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
