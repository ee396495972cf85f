"""Upload journaled runs into MongoDB, so that an outage loses nothing.

A journal run is a directory written by Sacred's FileStorageObserver (run.json, config.json,
info.json, metrics.json, cout.txt and the artifacts). Syncing one rebuilds the document that
MongoObserver would have written for a healthy run: the run document, one metrics document per
metric, and the artifacts in GridFS. A run is matched to its database document by
``info.run_uuid``; a document already equal to the journal is left alone, so syncing twice
changes nothing and never duplicates. Which journal belongs to which database is the store's
business (:func:`ablations.store.journal_runs`); this module only moves runs into a database.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import mimetypes
import time
from pathlib import Path

import gridfs
import pymongo

from ablations.record import STALE_AFTER_S

FINAL = ("COMPLETED", "FAILED", "INTERRUPTED", "TIMEOUT")


def _read_json(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def _time(value):
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


def load(run_dir: Path) -> dict:
    """A journal run as a dict of its parts."""
    return {
        "run": _read_json(run_dir / "run.json", {}),
        "config": _read_json(run_dir / "config.json", {}),
        "info": _read_json(run_dir / "info.json", {}),
        "metrics": _read_json(run_dir / "metrics.json", {}),
        "captured_out": (run_dir / "cout.txt").read_text(errors="replace") if (run_dir / "cout.txt").exists() else "",
    }


def is_settled(journal: dict, now: float | None = None) -> bool:
    """Final, or RUNNING with a heartbeat so old that nothing is writing it any more."""
    run = journal["run"]
    if run.get("status") in FINAL:
        return True
    beat = _time(run.get("heartbeat") or run.get("start_time"))
    age = (now or time.time()) - beat.replace(tzinfo=dt.timezone.utc).timestamp() if beat else 0
    return age > STALE_AFTER_S


def in_sync(db, doc: dict | None, journal: dict) -> bool:
    """True when the database document already holds all that the journal holds."""
    if doc is None or doc.get("status") != journal["run"].get("status"):
        return False
    if sorted(a["name"] for a in doc.get("artifacts", [])) != sorted(journal["run"].get("artifacts", [])):
        return False
    for name, series in journal["metrics"].items():
        stored = db.metrics.find_one({"run_id": doc["_id"], "name": name}, {"steps": 1})
        if stored is None or len(stored["steps"]) != len(series["steps"]):
            return False
    return True


def find_document(db, journal: dict, journal_id: int | None) -> dict | None:
    """The database document of a journal run: by ``info.run_uuid``, or, when the database went away
    before the first heartbeat carried the uuid, by the id it assigned and the same start time."""
    doc = db.runs.find_one({"info.run_uuid": journal["info"]["run_uuid"]})
    if doc is not None or journal_id is None:
        return doc
    doc = db.runs.find_one({"_id": journal_id})
    started = _time(journal["run"].get("start_time"))
    if doc and doc.get("start_time") and started and abs((doc["start_time"] - started).total_seconds()) < 0.002:
        return doc
    return None


def _allocate_id(db, preferred) -> int:
    """The journal's own id when the database has no run under it, else the next free integer."""
    if isinstance(preferred, int) and db.runs.count_documents({"_id": preferred}, limit=1) == 0:
        return preferred
    last = db.runs.find_one({}, {"_id": 1}, sort=[("_id", pymongo.DESCENDING)])
    return (last["_id"] + 1) if last else 1


def _put_file(fs: gridfs.GridFS, path: Path, filename: str) -> object:
    for old in fs.find({"filename": filename}):  # a partial upload from before the outage
        fs.delete(old._id)
    with open(path, "rb") as f:
        return fs.put(f, filename=filename, content_type=mimetypes.guess_type(path.name)[0])


def _sources(fs: gridfs.GridFS, run_dir: Path, sources: list) -> list:
    out = []
    for name, stored_path in sources:
        path = run_dir.parent / stored_path  # FileStorageObserver keeps them in <journal>/_sources
        if not path.exists():
            continue
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        existing = fs.find_one({"filename": f"source://{name}", "metadata.md5": md5})
        file_id = existing._id if existing else fs.put(path.read_bytes(), filename=f"source://{name}",
                                                      metadata={"md5": md5})
        out.append([name, file_id])
    return out


def _document(fs, run_dir: Path, journal: dict, run_id: int) -> dict:
    run = dict(journal["run"])
    experiment = dict(run.get("experiment", {}))
    experiment["sources"] = _sources(fs, run_dir, experiment.get("sources", []))
    artifacts = [{"name": name, "file_id": _put_file(fs, run_dir / name, f"artifact://runs/{run_id}/{name}")}
                 for name in run.get("artifacts", [])]
    doc = run | {"_id": run_id, "experiment": experiment, "artifacts": artifacts, "config": journal["config"],
                 "info": journal["info"], "captured_out": journal["captured_out"], "format": "MongoObserver-0.7.0"}
    for key in ("start_time", "stop_time", "heartbeat"):
        if doc.get(key):
            doc[key] = _time(doc[key])
    return doc


def _metrics(db, run_id: int, journal: dict) -> list[dict]:
    db.metrics.delete_many({"run_id": run_id})
    refs = []
    for name, series in journal["metrics"].items():
        stamps = [_time(t) for t in series.get("timestamps", [])]
        inserted = db.metrics.insert_one({"run_id": run_id, "name": name, "steps": series["steps"],
                                          "values": series["values"], "timestamps": stamps})
        refs.append({"name": name, "id": str(inserted.inserted_id)})
    return refs


def sync_run(db, run_dir: Path) -> tuple[int | None, str]:
    """Bring one journal run into the database; return (database id, what was done)."""
    journal = load(run_dir)
    run_uuid = journal["info"].get("run_uuid")
    if not run_uuid or not is_settled(journal):
        return None, "skipped (still running)" if run_uuid else "skipped (no run_uuid)"
    preferred = int(run_dir.name) if run_dir.name.isdigit() and run_dir.parent.name != "offline" else None
    doc = find_document(db, journal, preferred)
    if in_sync(db, doc, journal):
        return doc["_id"], "in sync"
    fs = gridfs.GridFS(db)
    run_id = doc["_id"] if doc else _allocate_id(db, preferred)
    if doc:
        for artifact in doc.get("artifacts", []):
            fs.delete(artifact["file_id"])
    new = _document(fs, run_dir, journal, run_id)
    new["info"] = dict(new["info"], metrics=_metrics(db, run_id, journal))
    db.runs.replace_one({"_id": run_id}, new, upsert=True)
    (run_dir / "synced.json").write_text(json.dumps({"db_id": run_id, "status": new.get("status")}))
    return run_id, "updated" if doc else "inserted"


def record_after_run(db, run_dir: Path, wait_s: float = 60.0, log=print) -> dict | None:
    """The database's record of the run just ended in ``run_dir``, first brought up to its journal where the
    database missed part of it (it went away during the run, and may still be coming back: asked again for up to
    ``wait_s``). Else a sweep would run again a cell that completed, and a later sync store it twice.

    :raises pymongo.errors.PyMongoError: when the database does not answer within ``wait_s``.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if (run_dir / "run.json").exists() and (action := sync_run(db, run_dir)[1]) in ("updated", "inserted"):
                log(f"run {run_dir.name}: the database missed part of it; {action} from {run_dir}")
            return db.runs.find_one({"_id": int(run_dir.name)})
        except pymongo.errors.PyMongoError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def sync_all(db, run_dirs: list[Path], log=print) -> bool:
    """Sync each journal run directory into ``db``; print one line per run; True when none failed."""
    ok = True
    for run_dir in run_dirs:
        try:
            run_id, action = sync_run(db, run_dir)
            log(f"{run_dir}: {action}" + (f" as run {run_id}" if run_id is not None else ""))
        except (pymongo.errors.PyMongoError, OSError, ValueError) as exc:
            ok = False
            log(f"{run_dir}: FAILED to sync: {type(exc).__name__}: {exc}")
    return ok
