"""How a run is written: Sacred's observers, the database first (it gives the run its id), then the journal.

The journal (:func:`ablations.store.Target.journal_dir`) holds the whole run whatever the database does, so the
database observer gives up sooner than Sacred's, and a journal folder in the way of a new run is moved aside,
never overwritten. Only ``ablations/run.py`` needs this module, and with it Sacred's observers.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pymongo
from sacred.observers import FileStorageObserver, MongoObserver

from ablations.store import TIMEOUT_MS, Target


class JournaledMongoObserver(MongoObserver):
    """MongoObserver that gives up the final save after 2 tries instead of 10: the journal holds
    the whole run, and `sync` uploads it, so waiting minutes for a dead database gains nothing."""

    def final_save(self, attempts):
        for _ in range(2):
            try:
                self.runs.update_one({"_id": self.run_entry["_id"]}, {"$set": self.run_entry}, upsert=True)
                return
            except pymongo.errors.PyMongoError:
                time.sleep(1)
        print(f"WARNING: could not store the end of run {self.run_entry['_id']} in MongoDB; "
              "it is complete in the journal", file=sys.stderr)


class Journal(FileStorageObserver):
    """The journal, named by the database's run ids. A folder already there under the id the database has
    just given out holds a run the database no longer has (its runs were deleted, its identity kept): it is
    moved to ``_displaced/`` rather than failing the new run, and nothing is deleted."""

    def started_event(self, *args, **kwargs):
        if kwargs.get("_id") is not None:
            displace(Path(self.basedir), kwargs["_id"])
        return super().started_event(*args, **kwargs)


def displace(journal: Path, run_id: int) -> Path | None:
    """Move the journal's folder for ``run_id``, if there is one, to ``_displaced/ID-TIME-PID/``; where it went."""
    folder = journal / str(run_id)
    if not folder.exists():
        return None
    moved = journal / "_displaced" / f"{run_id}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    moved.parent.mkdir(exist_ok=True)
    folder.rename(moved)
    print(f"WARNING: the journal held a run under id {run_id}, which the database has just given to a new run "
          f"(runs were deleted from the database, which kept its identity): moved to {moved}", file=sys.stderr)
    return moved


def observers(target: Target, journal_only: bool = False) -> list:
    """Sacred observers: MongoDB (first, so it assigns the run id) and the local journal; the journal alone
    for a journal-only run."""
    journal = Journal(str(target.journal_dir(online=not journal_only)))
    if journal_only:
        return [journal]
    mongo = JournaledMongoObserver(url=target.url, db_name=target.db_name, serverSelectionTimeoutMS=TIMEOUT_MS,
                                   connectTimeoutMS=TIMEOUT_MS, socketTimeoutMS=4 * TIMEOUT_MS)
    return [mongo, journal]
