"""Runs and metrics from MongoDB (or a JSON dump) into pandas.

    python -m analysis.runs export --sweep ID reports/runs.json [-m URL]
    python -m analysis.runs import reports/runs.json [-m URL]

A dump is a JSON list of the stored run documents (MongoDB extended JSON, so dates and ids
round-trip), each with its metrics under ``metrics`` and its small artifacts (the sample grid)
embedded under ``artifact_data``, so that the report regenerates without any database. A sweep's
runs include the cells it found stored by another sweep, as copies marked ``member_of`` (see
:mod:`ablations.sweep_manifest`); importing a dump stores the runs without that mark.
"""
from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

import gridfs
import pandas as pd
from bson import json_util

from ablations.record import ARTIFACTS, IMPORTED, RESULT_KEYS, SAMPLE_GRID, TOGGLES, precision_of
from ablations.store import StoreUnavailable, database, mongo_option  # URLs and the server: no Sacred machinery
from ablations.sweep_manifest import MEMBER_OF, borrowed, check_known, member_cell, unfinished

EMBEDDED = (SAMPLE_GRID,)  # artifacts small enough to travel inside a dump


def _to_stderr(line: str) -> None:  # the embedded server's start-up lines, kept off a JSON or table on stdout
    print(line, file=sys.stderr)


def from_mongo(url: str | None = None, sweep: str | None = None, status: str | None = None) -> list[dict]:
    """Run documents of a database (optionally one sweep's, borrowed cells included), each with ``metrics``
    and ``artifact_data``."""
    with database(url, log=_to_stderr) as db:
        if sweep is not None:
            check_known(db, sweep)
        query = {k: v for k, v in (("config.sweep_id", sweep), ("status", status)) if v is not None}
        docs = list(db.runs.find(query, sort=[("_id", 1)]))
        if sweep is not None:
            docs += [d for d in borrowed(db, sweep, docs) if status in (None, d.get("status"))]
        fs = gridfs.GridFS(db)
        for doc in docs:
            doc["metrics"] = {m["name"]: {"steps": m["steps"], "values": m["values"]}
                              for m in db.metrics.find({"run_id": doc["_id"]})}
            doc["artifact_data"] = {a["name"]: base64.b64encode(fs.get(a["file_id"]).read()).decode()
                                    for a in doc.get("artifacts", []) if a["name"] in EMBEDDED}
    return docs


def planned_not_stored(url: str | None, sweep: str) -> list[dict]:
    """The cells x seeds a sweep planned that no COMPLETED run holds (:func:`ablations.sweep_manifest.unfinished`)."""
    with database(url, log=_to_stderr) as db:
        return unfinished(db, sweep)


def from_dump(path: Path | str) -> list[dict]:
    """The run records of a dump written by :func:`export`; ValueError names a path that is not one."""
    try:
        docs = json_util.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:  # missing, unreadable, or not JSON (json's errors are ValueErrors)
        raise ValueError(f"invalid dump {str(path)!r} ({exc}): valid values are JSON files written by "
                         "`python -m analysis.runs export`") from None
    if not isinstance(docs, list) or not all(isinstance(doc, dict) and "_id" in doc for doc in docs):
        raise ValueError(f"invalid dump {str(path)!r}: it holds no list of run records; valid values are JSON "
                         "files written by `python -m analysis.runs export`")
    return docs


def export(docs: list[dict], path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json_util.dumps(docs, indent=1, json_options=json_util.RELAXED_JSON_OPTIONS))
    return path


def import_dump(docs: list[dict], url: str | None = None) -> int:
    """Insert dumped runs (with their metrics and embedded artifacts) into a database; return how many."""
    with database(url, log=_to_stderr) as db:
        fs = gridfs.GridFS(db)
        for doc in docs:
            doc = dict(doc)
            metrics, data = doc.pop("metrics", {}), doc.pop("artifact_data", {})
            doc.pop(MEMBER_OF, None)  # how a sweep saw the run, not part of its record
            doc["artifacts"] = [{"name": n, "file_id": fs.put(base64.b64decode(b), filename=f"artifact://runs/"
                                                              f"{doc['_id']}/{n}")} for n, b in data.items()]
            if doc.get("status") == "COMPLETED":  # what it lacks, so that the audit does not call it lost
                doc[IMPORTED] = {"without": [name for name in ARTIFACTS if name not in data]}
            db.runs.replace_one({"_id": doc["_id"]}, doc, upsert=True)
            db.metrics.delete_many({"run_id": doc["_id"]})
            for name, series in metrics.items():
                db.metrics.insert_one({"run_id": doc["_id"], "name": name, **series})
    return len(docs)


def runs_table(docs: list[dict]) -> pd.DataFrame:
    """One row per run: toggles, seed, sweep, status, results, wall times, throughput, provenance."""
    rows = []
    for d in docs:
        c, info, result = d.get("config", {}), d.get("info", {}), d.get("result") or {}
        speed = d.get("metrics", {}).get("train.images_per_s", {}).get("values", [])
        rows.append({
            "run_id": d["_id"], "status": d.get("status"), "sweep_id": c.get("sweep_id"),
            "cell": member_cell(d), "seed": c.get("seed"), "scale": c.get("scale"),
            "dtype": precision_of(d),  # the precision it computed in (info.precision); "precision" is a metric
            **{t: c.get(t) for t in TOGGLES},
            **{k: result.get(k) for k in RESULT_KEYS},
            "fid_floor": info.get("fid_floor"), "n_samples": c.get("n_samples"), "sampler": c.get("sampler"),
            "sampler_steps": c.get("sampler_steps"), "sampler_eta": c.get("sampler_eta", 0.0),
            "train_steps": c.get("train_steps"), "fused": bool(c.get("fused")),
            "batch_size": c.get("batch_size"), "lr": c.get("lr"),
            "lr_schedule": c.get("lr_schedule", "constant"), "peak_rss_mb": info.get("peak_rss_mb"),
            "device": info.get("environment", {}).get("device_name"), "stop_time": d.get("stop_time"),
            "sitting": info.get("sitting"),  # the sweep's invocation that made the run (None: a run alone)
            # trained partly before that invocation: resumed from its own checkpoint, or its fused group's
            "resumed": info.get("resumed_from") is not None or bool((info.get("fused") or {}).get("resumed_at")),
            **{f"{k}_s": v for k, v in info.get("wall_time_s", {}).items()},
            "images_per_s": sum(speed) / len(speed) if speed else None,
            "commit": info.get("git", {}).get("commit"), "dirty": info.get("git", {}).get("dirty"),
            "classifier_sha256": info.get("classifier_sha256"),
            "mnist_train_sha256": info.get("mnist_sha256", {}).get("train"), "config_hash": info.get("config_hash"),
        })
    return separate_precisions(pd.DataFrame(rows))


def separate_precisions(runs: pd.DataFrame) -> pd.DataFrame:
    """Never one cell of two precisions: a cell whose runs computed in several gets one cell per
    precision, named e.g. "baseline [fp32]" (sweeps keep them apart; merged dumps might not)."""
    mixed = runs.groupby("cell")["dtype"].transform("nunique") > 1
    if mixed.any():
        runs.loc[mixed, "cell"] = [f"{c} [{p}]" for c, p in zip(runs.cell[mixed], runs.dtype[mixed])]
    return runs


def levels_table(docs: list[dict], metric: str = "heldout.eps_mse") -> pd.DataFrame:
    """Long table of a held-out metric per noise level: run_id, cell, seed, log_snr, value."""
    rows = [{"run_id": d["_id"], "cell": member_cell(d),
             "seed": d.get("config", {}).get("seed"), "log_snr": d["info"]["heldout"]["log_snr"][step], "value": v}
            for d in docs if metric in d.get("metrics", {})
            for step, v in zip(d["metrics"][metric]["steps"], d["metrics"][metric]["values"])]
    return pd.DataFrame(rows, columns=["run_id", "cell", "seed", "log_snr", "value"])


def curves_table(docs: list[dict], metric: str = "train.loss") -> pd.DataFrame:
    """Long table of one training curve: run_id, cell, seed, step, value."""
    rows = [{"run_id": d["_id"], "cell": member_cell(d),
             "seed": d.get("config", {}).get("seed"), "step": s, "value": v}
            for d in docs
            for s, v in zip(*(d.get("metrics", {}).get(metric, {}).get(k, []) for k in ("steps", "values")))]
    return pd.DataFrame(rows, columns=["run_id", "cell", "seed", "step", "value"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.runs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write a sweep's runs to a JSON dump")
    exp.add_argument("path", type=Path)
    exp.add_argument("--sweep")
    mongo_option(exp)
    imp = sub.add_parser("import", help="load a JSON dump into a database")
    imp.add_argument("path", type=Path)
    mongo_option(imp)
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            docs = from_mongo(args.mongo, args.sweep)
            print(f"wrote {len(docs)} runs to {export(docs, args.path)}")
        else:
            print(f"imported {import_dump(from_dump(args.path), args.mongo)} runs")
    except (ValueError, StoreUnavailable) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
