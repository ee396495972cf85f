"""What a sweep runs, one job at a time: a cell as an ``ablations/run.py`` process, or a fused training
and its runs.

A cell already COMPLETED in the store is skipped; an INTERRUPTED or FAILED one is resumed from its
checkpoint when the journal has one, else run again. Cells are claimed atomically in the database
(:mod:`ablations.claims`), so two sweeps never run one cell twice, nor train one twice in fused groups.
:func:`stop` ends a sweep early (its Ctrl-C or SIGTERM): the runs under way checkpoint and end INTERRUPTED,
and no run starts or is retried after it. A fused job (``sweep.py --fuse``) trains the seeds not stored of one
cell, or of the cells that differ only in ``ema`` and ``schedule``, with ``ablations/fused_group.py``, then runs
each seed of each cell from its checkpoint; a fused training stopped with the sweep is resumed by the sweep's
next run.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import pymongo
from tqdm import tqdm

from ablations import fused_group
from ablations import plan as plans
from ablations import claims, store, sync
from ablations.record import CHECKPOINT, PACK_ENV

RUN_PY = Path(__file__).resolve().parent / "run.py"
GROUP_PY = Path(__file__).resolve().parent / "fused_group.py"
RETRIES = 1  # a cell whose run died is tried once more, from its last checkpoint
NOT_STARTED = "not started"  # the row of a cell whose run the sweep's stop came before
TRAINING_STOPPED = "training stopped"  # the row of a cell whose fused training the stop ended (it resumes)
DATABASE_AWAY = "database away"  # the row of a cell the database went away from (its run, if any, is journaled)


def say(text: str) -> None:
    """A line of the sweep's to stderr, whole, above its progress bar (cells running at once print together)."""
    tqdm.write(text, file=sys.stderr)


@dataclass
class Task:
    """Everything a worker needs to run one cell (plain data, so Dask can ship it)."""

    sweep_id: str
    cell: str
    seed: int
    key: str
    words: list[str]  # the `with` words of the run
    mongo: str | None
    db_name: str
    journal_only: bool = False
    pack: int = 1  # how many runs share this machine's device at a time (recorded as info.pack)
    refusal: str | None = None  # why this machine cannot run the cell (it may still be stored)
    env: dict = field(default_factory=dict)  # set for the run's process, beside this process's environment
    # --fuse: cells with the same training key train together (seeds aside, they differ at most in `ema` and
    # `schedule`)
    training_key: str | None = None
    ema: bool = False
    schedule: str = "cosine"


def _stored(db, key: str, status) -> dict | None:
    return db.runs.find_one({"info.config_hash": key, "status": status}, sort=[("_id", pymongo.DESCENDING)])


def _newest_first(base: Path) -> list[Path]:
    """The run directories of a journal directory (named by run id), newest first."""
    return sorted((d for d in base.glob("*") if d.name.isdigit()), key=lambda d: -int(d.name))


def _resumable(key: str, base: Path) -> int | None:
    """The newest unfinished run of this cell with a checkpoint in the journal directory ``base``.

    Read from the journal's config.json, which exists from the run's first moment (the database
    learns the config hash only at the first heartbeat, which a killed run may never reach)."""
    for run_dir in _newest_first(base):
        if not (run_dir / CHECKPOINT).exists() or not (run_dir / "config.json").exists():
            continue
        stored = json.loads((run_dir / "config.json").read_text())
        status = json.loads((run_dir / "run.json").read_text()).get("status")
        if status != "COMPLETED" and plans.key_of(stored) == key:
            return int(run_dir.name)
    return None


def _die_with_parent() -> None:
    """Linux: the run process gets SIGKILL when its parent (a Dask worker) dies, leaving no orphan."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# The processes of this sweep's runs and fused trainings, and whether the sweep was told to stop (set under the
# lock, so that no process starts after stop() has signalled those running)
_RUNNING: set[subprocess.Popen] = set()
_RUNNING_LOCK = threading.Lock()
STOPPED = threading.Event()


def _child(command: list[str], env: dict) -> subprocess.CompletedProcess | None:
    """Run a run's or a fused training's process to its end, where :func:`stop` can reach it; None, starting
    nothing, once the sweep is stopping."""
    with _RUNNING_LOCK:
        if STOPPED.is_set():
            return None
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_die_with_parent, env=env)
        _RUNNING.add(proc)
    try:
        out, err = proc.communicate()
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(proc)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def stop() -> int:
    """Stop the sweep: SIGTERM to every process it runs (a run then writes its final checkpoint and ends
    INTERRUPTED, to be resumed by the same sweep later; a fused training ends), and none starts or is retried
    after this. Returns how many were running."""
    with _RUNNING_LOCK:
        STOPPED.set()
        running = list(_RUNNING)
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    return len(running)


def _journal_run(run_dir: Path) -> dict | None:
    """A journal-only run's run.json (status, result), or None while it has none."""
    return json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else None


def _stored_in_journal(key: str, base: Path) -> dict | None:
    """The newest COMPLETED run of this cell in the journal directory ``base``, with its ``_id``."""
    for run_dir in _newest_first(base):
        info_path = run_dir / "info.json"
        if info_path.exists() and json.loads(info_path.read_text()).get("config_hash") == key:
            run = _journal_run(run_dir)
            if run and run.get("status") == "COMPLETED":
                return run | {"_id": int(run_dir.name)}
    return None


def _attempts(task: Task, journal: Path, fetch) -> tuple[str, subprocess.CompletedProcess | None, int | None, dict]:
    """Run the cell (a run that died is resumed once from its checkpoint, unless the sweep is stopping);
    (status, output, run id, record)."""
    status, out, run_id, doc = NOT_STARTED, None, None, {}
    for _ in range(1 + RETRIES):
        resume = _resumable(task.key, journal)
        words = [f"resume={resume}"] if resume is not None else task.words
        store_args = (["-m", task.mongo] if task.mongo else []) + (["--journal-only"] if task.journal_only else [])
        out = _child([sys.executable, str(RUN_PY), *store_args, "with", *words],
                     os.environ | task.env | {PACK_ENV: str(task.pack)})
        if out is None:
            break
        found = re.search(r'Started run with ID "(\d+)"', out.stderr + out.stdout)
        run_id = int(found.group(1)) if found else None
        doc = (fetch(run_id) if run_id is not None else None) or {}
        stopped = STOPPED.is_set()  # a stopped run's record says how it ended (INTERRUPTED)
        status = (doc.get("status") or "FAILED") if out.returncode == 0 or stopped else "FAILED"
        if status == "COMPLETED" or stopped:
            break
    return status, out, run_id, doc


def _row(task: Task, status: str, run_id=None, doc: dict | None = None, wall_s: float = 0.0) -> dict:
    result = (doc or {}).get("result") or {} if status in ("COMPLETED", "stored") else {}
    return {"cell": task.cell, "seed": task.seed, "status": status, "run_id": run_id, "result": result,
            "wall_s": wall_s}


def _not_to_run(task: Task, done: dict | None) -> dict | None:
    """The row of a cell already stored (``done``), or of one this machine cannot run; None for the rest."""
    if done:
        return _row(task, "stored", done["_id"], done)
    return _row(task, "not run here") if task.refusal else None


# Set by a fused sweep here: at most --pack processes on this machine's device at once (a fused training, or a run).
DEVICE_SLOTS: threading.BoundedSemaphore | None = None


@contextlib.contextmanager
def device_slot():
    """Hold one of the ``--pack`` places on this machine's device (no limit where none is set)."""
    with DEVICE_SLOTS if DEVICE_SLOTS is not None else contextlib.nullcontext():
        yield


def _run_here(task: Task, journal: Path, fetch) -> dict:
    """Run the cell whose runs are journaled in ``journal`` (resumed from there), ``fetch(run_id)`` its record."""
    with device_slot():
        started = time.time()  # the run's own time, not its wait for a place on the device
        status, out, run_id, doc = _attempts(task, journal, fetch)
    if status != "COMPLETED" and not STOPPED.is_set():
        say(f"cell {task.cell} seed {task.seed} failed:\n{(out.stderr or out.stdout)[-2000:]}")
    elif status == "COMPLETED":  # what a run warned of (a journal folder moved aside, a database gone mid-run)
        for line in out.stderr.splitlines():
            if line.startswith("WARNING:"):
                say(f"cell {task.cell} seed {task.seed}: {line}")
    return _row(task, status, run_id, doc, time.time() - started)


def stored_row(task: Task) -> dict | None:
    """The row of a cell already stored, or that this machine cannot run; None for one to run."""
    target = store.resolve(task.mongo)
    if task.journal_only:
        return _not_to_run(task, _stored_in_journal(task.key, target.journal_dir(online=False)))
    with target.client() as client:
        return _not_to_run(task, _stored(client[target.db_name], task.key, "COMPLETED"))


def run_cell(task: Task, holder: dict | None = None) -> dict:
    """Run one cell unless it is stored or claimed (but by ``holder``, a fused group's); return a summary row."""
    target = store.resolve(task.mongo)
    if task.journal_only:  # no database: the journal is the store, and this sweep the only claimant
        base = target.journal_dir(online=False)
        if row := _not_to_run(task, _stored_in_journal(task.key, base)):
            return row
        return _run_here(task, base, lambda run_id: _journal_run(base / str(run_id)))
    try:
        with target.client() as client:
            db, holder = client[target.db_name], holder or claims.owner()
            if row := _not_to_run(task, _stored(db, task.key, "COMPLETED")):
                return row
            if not claims.claim(db, task.key, holder):
                return _row(task, "claimed elsewhere")
            journal = target.journal_dir()
            row = _run_here(task, journal, lambda run_id: sync.record_after_run(db, journal / str(run_id), log=say))
            claims.release(db, task.key, holder, "done" if row["status"] == "COMPLETED" else "failed")
            return row
    except pymongo.errors.PyMongoError as exc:  # what ran is in the journal; `store sync`, then the sweep again
        say(f"cell {task.cell} seed {task.seed}: the database went away ({type(exc).__name__})")
        return _row(task, DATABASE_AWAY)


def _group_dir(words: list[str], members: list[list]) -> Path:
    """The folder of a fused group's member checkpoints, kept under the local state's ``fused/`` until all its
    cells are stored: a stopped sweep's next run resumes the training there, and a group that already trained
    the members still to run (with others) is used whole. ``group.json`` names its words and members."""
    words = [w for w in words if not w.startswith(("sweep_id=", "cell="))]  # what the training depends on
    root = store.home() / "fused"
    for manifest in sorted(root.glob("*/group.json")):
        group = json.loads(manifest.read_text())
        if group["words"] == words and all(member in group["members"] for member in members):
            return manifest.parent
    folder = root / hashlib.sha256(json.dumps([words, members]).encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "group.json").write_text(json.dumps({"words": words, "members": members}))
    return folder


@contextlib.contextmanager
def _held_group_dir(words: list[str], members: list[list]):
    """(folder, its members) of :func:`_group_dir`, locked for this sweep; a folder apart, deleted after, where
    another sweep of this machine holds it."""
    folder = _group_dir(words, members)
    with open(folder / "group.json") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with tempfile.TemporaryDirectory(prefix="fused-", ignore_cleanup_errors=True) as apart:
                yield Path(apart), members
            return
        yield folder, json.load(lock)["members"]


def _train_group(lead: Task, words: list[str], members: list[list], out: Path, twins: bool):
    """Run ablations/fused_group.py for ``members`` into ``out``: its process's result (None if the sweep
    stopped first)."""
    seeds = ",".join(map(str, sorted({seed for seed, _ in members})))
    schedules = ",".join(sorted({schedule for _, schedule in members}))
    with device_slot():
        return _child([sys.executable, str(GROUP_PY), "--seeds", seeds, "--schedules", schedules, "--out", str(out),
                       *(["--ema-off-twins"] if twins else []), "with", *words], os.environ | lead.env)


@contextlib.contextmanager
def _members_claimed(tasks: list[Task], holder: dict):
    """The tasks of ``tasks`` (one job of :func:`jobs_of`) whose cells ``holder`` claimed in the database, cell by
    cell: another sweep whose group shares some of them (its seeds overlap) trains only the others and reports these
    "claimed elsewhere". A claim that no member's run ended (a cell stored already, a training stopped or failed) is
    released at the end. Journal-only, the sweep is the only claimant: every task."""
    if tasks[0].journal_only:
        yield tasks
        return
    target = store.resolve(tasks[0].mongo)
    with target.client() as client:
        held = [task for task in tasks if claims.claim(client[target.db_name], task.key, holder)]
    try:
        yield held
    finally:  # a database gone by now leaves the claims to expire (its process ends, or its lease)
        with target.client() as client, contextlib.suppress(pymongo.errors.PyMongoError):
            for task in held:
                claims.release(client[target.db_name], task.key, holder, "unused")


def run_group(tasks: list[Task]) -> list[dict]:
    """One fused training (ablations/fused_group.py) for the seeds not stored of cells that differ only in
    ``ema`` and ``schedule``, their cells claimed in the database for its whole length; then each seed of each cell
    is evaluated and recorded as its own run from its checkpoint (:func:`_train_and_run`)."""
    holder = claims.owner()
    try:
        with _members_claimed(tasks, holder) as held:
            rows = [row for task in tasks if (row := stored_row(task))]  # read once held: a holder stores them first
            done = {(row["cell"], row["seed"]) for row in rows}
            pending = [task for task in tasks if (task.cell, task.seed) not in done]
            rows += [_row(task, "claimed elsewhere") for task in pending if task not in held]
            pending = [task for task in pending if task in held]
            return rows + (_train_and_run(pending, holder) if pending else [])  # each run's row says a database away
    except pymongo.errors.PyMongoError as exc:  # before its training: nothing of the group ran
        say(f"cell {tasks[0].cell} fused: the database went away ({type(exc).__name__})")
        return [_row(task, DATABASE_AWAY) for task in tasks]


def _train_and_run(pending: list[Task], holder: dict) -> list[dict]:
    """The rows of ``pending``, trained as one group, its members at their seeds and schedules, with EMA where a
    cell has it (EMA never changes training: the group then leaves its EMA-off twins too); each then run from its
    member's checkpoint, under ``holder``'s claim of its cell. A training stopped with the sweep leaves its members'
    checkpoints (:func:`_group_dir`), from which the same sweep resumes it."""
    lead = next((task for task in pending if task.ema), pending[0])
    twins = lead.ema and not all(task.ema for task in pending)
    words = [w for w in lead.words if not w.startswith(("seed=", "schedule="))]
    wanted = sorted({(task.seed, task.schedule) for task in pending}, key=lambda m: (m[1], m[0]))
    with _held_group_dir(words, [list(member) for member in wanted]) as (out, members):
        started = time.time()
        trained = _train_group(lead, words, members, out, twins)
        if trained is None or (trained.returncode not in (0, fused_group.STOPPED_EXIT) and STOPPED.is_set()):
            return [_row(task, NOT_STARTED) for task in pending]  # no step of these seeds was trained
        if trained.returncode != 0:
            stopped = trained.returncode == fused_group.STOPPED_EXIT
            if not stopped:
                say(f"cell {lead.cell} members {members}: fused training failed:\n"
                    f"{(trained.stderr or trained.stdout)[-2000:]}")
            return [_row(task, TRAINING_STOPPED if stopped else "FAILED", wall_s=time.time() - started)
                    for task in pending]
        runs = [replace(task, words=[*task.words, "fused_checkpoint=" + repr(str(
            fused_group.member_checkpoint(out, task.seed, task.schedule, ema_off_twin=twins and not task.ema)))])
            for task in pending]
        with ThreadPoolExecutor(max_workers=len(runs)) as pool:  # each run waits for a place on the device
            rows = list(pool.map(functools.partial(run_cell, holder=holder), runs))  # their cells' claims
        if all(row["status"] in ("COMPLETED", "stored") for row in rows):
            shutil.rmtree(out, ignore_errors=True)  # every cell stored: the group's checkpoints have served
    return rows


def jobs_of(tasks: list[Task]) -> list[list[Task]]:
    """What runs as one unit: the fused tasks of one training key together (in the order of the plan), every
    other cell alone."""
    groups: dict[str, list[Task]] = {}
    for task in tasks:
        groups.setdefault(task.training_key or f"{task.cell}/{task.seed}", []).append(task)
    return list(groups.values())


def run_job(job: list[Task]) -> list[dict]:
    return run_group(job) if job[0].training_key else [run_cell(job[0])]
