"""Claims in the database (collection ``sweep_claims``): who runs a sweep's cell, or trains a fused group, now.

A claim is one document under the cell's key, taken atomically: two sweeps, on one machine or on two, never run one
cell twice, nor train it twice in fused groups (a group holds its members' cells while it trains, and hands each on
to its member's run). It is free when released, expired, or held by a dead process on this host; a claim of another
host's process that stopped answering is taken over after ``LEASE_S``.
"""
from __future__ import annotations

import os
import socket
import time
import uuid

import pymongo

LEASE_S = 6 * 3600  # a claim held longer than this by an unreachable owner may be taken over


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def owner() -> dict:
    """Who holds a claim: an id of its own, this host and this process (whose death frees it on this host)."""
    return {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}


def claim(db, key: str, holder: dict) -> bool:
    """Atomically take ``key`` for ``holder`` (an :func:`owner`): True when it was free, released, expired, held
    by a dead process on this host, or held by ``holder`` already."""
    claims = db.sweep_claims
    current = claims.find_one({"_id": key})
    stale = current is not None and current.get("state") == "running" and (
        current.get("expires", 0) < time.time()
        or (current.get("host") == holder["host"] and not _pid_alive(current.get("pid", -1))))
    free = {"$or": [{"state": {"$ne": "running"}}, {"expires": {"$lt": time.time()}}, {"owner": holder["owner"]}]}
    if stale:
        free = {"owner": current["owner"]}
    try:
        claims.find_one_and_update({"_id": key, **free}, {"$set": {**holder, "state": "running",
                                                                   "expires": time.time() + LEASE_S}}, upsert=True)
        return True
    except pymongo.errors.DuplicateKeyError:
        return False  # someone else holds it


def release(db, key: str, holder: dict, state: str) -> None:
    """End ``holder``'s claim on ``key``, leaving its ``state`` ("done", "failed", "unused"); a claim already ended,
    or another's, is untouched."""
    db.sweep_claims.update_one({"_id": key, "owner": holder["owner"], "state": "running"}, {"$set": {"state": state}})
