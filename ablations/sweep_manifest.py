"""What a sweep is made of: its cell x seed keys, recorded where its runs are stored.

A sweep skips a cell x seed that is COMPLETED in the store whichever sweep stored it: the cell key
(``info.config_hash``) is a run's identity, not its ``sweep_id``. So that the sweep's report and export
still hold such a cell, the sweep records its manifest before it runs anything::

    {"_id": "sw-...", "plan": "ofat", "only": ["attention"] | None, "with": ["smoke"],
     "cells": [{"cell": "baseline", "seed": 0, "key": "<config_hash>"}, ...]}

in the database's ``sweeps`` collection, or, journal-only, in ``<journal>/offline/_sweeps/<sweep_id>.json``,
which bundles carry and ``python -m ablations.store sync`` uploads. Rerunning a sweep with more seeds adds
cells to its manifest; nothing is ever taken out of one.

:func:`borrowed` gives the runs a sweep counts as its own without having made them: for each key of its
manifest with no COMPLETED run of the sweep, the newest COMPLETED run of that key (the one the sweep found
stored), as a copy that names the sweep and the cell it stands for under ``member_of``. The stored
document itself is never changed.
"""
from __future__ import annotations

import json
from pathlib import Path

import pymongo

COLLECTION = "sweeps"
DIRECTORY = "_sweeps"  # beside the journal-only runs, whose directories are named by run id or run_uuid
MEMBER_OF = "member_of"  # the mark of a borrowed copy: {"sweep_id": ..., "cell": ...}


def manifest(sweep_id: str, plan: str, only: list[str] | None, with_words: list[str], tasks) -> dict:
    """The manifest of a sweep about to run ``tasks`` (anything with ``cell``, ``seed`` and ``key``)."""
    return {"_id": sweep_id, "plan": plan, "only": sorted(only) if only else None, "with": list(with_words),
            "cells": [{"cell": t.cell, "seed": t.seed, "key": t.key} for t in tasks]}


def record(db, sweep: dict) -> None:
    """Add ``sweep``'s cells to its manifest in ``db`` (created on first use; atomic, so sweeps may race)."""
    head = {k: v for k, v in sweep.items() if k not in ("_id", "cells")}
    db[COLLECTION].update_one({"_id": sweep["_id"]}, {"$setOnInsert": head,
                                                     "$addToSet": {"cells": {"$each": sweep["cells"]}}}, upsert=True)


def _merged(old: dict | None, new: dict) -> dict:
    cells = (old or {}).get("cells", [])
    return (old or new) | {"cells": cells + [c for c in new["cells"] if c not in cells]}


def write_journal(offline_dir: Path, sweep: dict) -> Path:
    """Add ``sweep``'s cells to its manifest file in the journal-only directory ``offline_dir``."""
    path = offline_dir / DIRECTORY / f"{sweep['_id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.exists() else None
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_merged(old, sweep), indent=1))
    tmp.replace(path)  # never a half-written manifest
    return path


def journal_files(offline_dir: Path) -> list[Path]:
    """The manifest files of a journal-only directory."""
    return sorted((offline_dir / DIRECTORY).glob("*.json"))


def upload(db, offline_dir: Path, log=print) -> int:
    """Record every manifest of the journal-only directory ``offline_dir`` in ``db``; return how many."""
    files = journal_files(offline_dir)
    for path in files:
        record(db, json.loads(path.read_text()))
        log(f"{path}: sweep manifest recorded")
    return len(files)


def check_known(db, sweep_id: str) -> None:
    """:raises ValueError: naming ``sweep_id`` and the stored ones, when no run and no manifest names it."""
    if db[COLLECTION].find_one({"_id": sweep_id}, {"_id": 1}) or db.runs.find_one({"config.sweep_id": sweep_id},
                                                                                  {"_id": 1}):
        return
    known = sorted({s for s in db.runs.distinct("config.sweep_id") if s} | set(db[COLLECTION].distinct("_id")))
    raise ValueError(f"invalid sweep {sweep_id!r}: this database holds no run and no manifest of it; valid values "
                     f"are the stored sweeps: {', '.join(known) or 'none'}")


def borrowed(db, sweep_id: str, own: list[dict]) -> list[dict]:
    """Copies of the runs that ``sweep_id`` found stored by other sweeps (see the module's docstring).

    :param own: the sweep's own run documents (``config.sweep_id`` is ``sweep_id``).
    """
    sweep = db[COLLECTION].find_one({"_id": sweep_id}) or {"cells": []}
    done = {d.get("info", {}).get("config_hash") for d in own if d.get("status") == "COMPLETED"}
    copies = []
    for entry in sweep["cells"]:
        if entry["key"] in done:
            continue
        doc = db.runs.find_one({"info.config_hash": entry["key"], "status": "COMPLETED"},
                               sort=[("_id", pymongo.DESCENDING)])
        if doc is not None:
            copies.append(doc | {MEMBER_OF: {"sweep_id": sweep_id, "cell": entry["cell"]}})
    return copies


def unfinished(db, sweep_id: str) -> list[dict]:
    """The entries of the sweep's manifest (``cell``, ``seed``, ``key``) that no COMPLETED run holds."""
    sweep = db[COLLECTION].find_one({"_id": sweep_id}) or {"cells": []}
    return [entry for entry in sweep["cells"]
            if not db.runs.find_one({"info.config_hash": entry["key"], "status": "COMPLETED"}, {"_id": 1})]


def member_cell(doc: dict) -> str:
    """The cell a run stands for: the borrowing sweep's name for it, else its own, else "custom"."""
    return (doc.get(MEMBER_OF) or {}).get("cell") or doc.get("config", {}).get("cell") or "custom"


def in_sweeps(doc: dict, sweeps: list[str]) -> bool:
    """Whether a run belongs to one of ``sweeps``: made by it, or borrowed by it."""
    return doc.get("config", {}).get("sweep_id") in sweeps or (doc.get(MEMBER_OF) or {}).get("sweep_id") in sweeps
