"""Ablation sweeps: a plan x seeds, each cell a normal Sacred run of ``ablations/run.py``.

    python ablations/sweep.py --plan ofat --seeds 0,1,2 with small           # 6 configs x 3 seeds, here
    python ablations/sweep.py --plan full --seeds 0 --only attention,ema with smoke
    python ablations/sweep.py --plan ofat --seeds 0,1 --dry-run with small
    python ablations/sweep.py --plan ofat --seeds 0,1 --workers 2 with smoke  # a Dask LocalCluster
    python ablations/sweep.py --plan ofat --seeds 0,1 --scheduler tcp://HOST:8786 with paper
    python ablations/sweep.py --plan ofat --seeds 0,1,2 --pack 6 --journal-only with gpu   # 6 runs at once, no database
    python ablations/sweep.py --plan ofat --seeds 0,1,2 --fuse with gpu      # each cell's 3 seeds as one network

Idempotent: a cell x seed already COMPLETED in the store is skipped; an INTERRUPTED or FAILED
one is resumed from its checkpoint when the journal has one, else run again. Cells are claimed
atomically in the database (collection ``sweep_claims``), so two sweeps never run one cell twice.

``--pack K`` runs K cells at a time on this machine's one device, each in its own process (a normal
Sacred run, with the torch threads of the CPU shared out): a process computes exactly what it would
alone, so a packed run equals the same cell run solo bit for bit. On a GPU the processes share the
chip (their kernels overlap only under CUDA MPS; see the README's "Packing"). ``--journal-only``
needs no database: runs go to the local journal, a cell COMPLETED there is skipped, and
``python -m ablations.store bundle`` packs them for ``python -m ablations.store sync`` elsewhere.

``--fuse`` trains the seeds of each cell as one stacked network (:mod:`core.fused`,
``ablations/fused_group.py``), then records each seed as its own run: a member equals its solo run up
to float rounding, not bit for bit, so fused runs are cells of their own (``fused=True`` is part of
their identity and of the sweep id). Dropout's cells cannot be fused and train alone. EMA never changes
training, so the cells that differ only in ``ema`` (the baseline and its EMA cell) share one fused training.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import pymongo
from tqdm.auto import tqdm

from ablations import cuda_mps, fused_group
from ablations import plan as plans
from ablations import store
from ablations.record import CHECKPOINT, PACK_ENV, config_hash

RUN_PY = Path(__file__).resolve().parent / "run.py"
GROUP_PY = Path(__file__).resolve().parent / "fused_group.py"
RETRIES = 1  # a cell whose run died is tried once more, from its last checkpoint
LEASE_S = 6 * 3600  # a claim held longer than this by an unreachable owner may be taken over


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
    # --fuse: cells with the same training key train together (seeds aside, they differ at most in `ema`)
    training_key: str | None = None
    ema: bool = False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def claim(db, key: str, owner: dict) -> bool:
    """Atomically take cell ``key``: free, released, expired, or held by a dead process on this host."""
    claims = db.sweep_claims
    current = claims.find_one({"_id": key})
    stale = current is not None and current.get("state") == "running" and (
        current.get("expires", 0) < time.time()
        or (current.get("host") == owner["host"] and not _pid_alive(current.get("pid", -1))))
    free = {"$or": [{"state": {"$ne": "running"}}, {"expires": {"$lt": time.time()}}]}
    if stale:
        free = {"owner": current["owner"]}
    try:
        claims.find_one_and_update({"_id": key, **free}, {"$set": {**owner, "state": "running",
                                                                   "expires": time.time() + LEASE_S}}, upsert=True)
        return True
    except pymongo.errors.DuplicateKeyError:
        return False  # someone else holds it


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


def _attempts(task: Task, target: store.Target, fetch) -> tuple[str, subprocess.CompletedProcess, int | None, dict]:
    """Run the cell (a run that died is resumed once from its checkpoint); (status, output, run id, record)."""
    journal = target.journal_dir(online=not task.journal_only)
    for _ in range(1 + RETRIES):
        resume = _resumable(task.key, journal)
        words = [f"resume={resume}"] if resume is not None else task.words
        store_args = (["-m", task.mongo] if task.mongo else []) + (["--journal-only"] if task.journal_only else [])
        out = subprocess.run([sys.executable, str(RUN_PY), *store_args, "with", *words], capture_output=True,
                             text=True, preexec_fn=_die_with_parent,
                             env=os.environ | task.env | {PACK_ENV: str(task.pack)})
        found = re.search(r'Started run with ID "(\d+)"', out.stderr + out.stdout)
        run_id = int(found.group(1)) if found else None
        doc = (fetch(run_id) if run_id is not None else None) or {}
        status = doc.get("status") if out.returncode == 0 else "FAILED"
        if status == "COMPLETED":
            break
    return status or "FAILED", out, run_id, doc


def _row(task: Task, status: str, run_id=None, doc: dict | None = None, wall_s: float = 0.0) -> dict:
    fid = (doc or {}).get("result", {}).get("fid") if status in ("COMPLETED", "stored") else None
    return {"cell": task.cell, "seed": task.seed, "status": status, "run_id": run_id, "fid": fid, "wall_s": wall_s}


def _not_to_run(task: Task, done: dict | None) -> dict | None:
    """The row of a cell already stored (``done``), or of one this machine cannot run; None for the rest."""
    if done:
        return _row(task, "stored", done["_id"], done)
    return _row(task, "not run here") if task.refusal else None


def _run_here(task: Task, target: store.Target, fetch) -> dict:
    started = time.time()
    status, out, run_id, doc = _attempts(task, target, fetch)
    if status != "COMPLETED":
        print(f"cell {task.cell} seed {task.seed} failed:\n{(out.stderr or out.stdout)[-2000:]}", file=sys.stderr)
    return _row(task, status, run_id, doc, time.time() - started)


def stored_row(task: Task) -> dict | None:
    """The row of a cell already stored, or that this machine cannot run; None for one to run."""
    target = store.resolve(task.mongo)
    if task.journal_only:
        return _not_to_run(task, _stored_in_journal(task.key, target.journal_dir(online=False)))
    with target.client() as client:
        return _not_to_run(task, _stored(client[target.db_name], task.key, "COMPLETED"))


def run_cell(task: Task) -> dict:
    """Run one cell unless it is stored or claimed; return a summary row."""
    target = store.resolve(task.mongo)
    if task.journal_only:  # no database: the journal is the store, and this sweep the only claimant
        base = target.journal_dir(online=False)
        if row := _not_to_run(task, _stored_in_journal(task.key, base)):
            return row
        return _run_here(task, target, lambda run_id: _journal_run(base / str(run_id)))
    with target.client() as client:
        db = client[target.db_name]
        if row := _not_to_run(task, _stored(db, task.key, "COMPLETED")):
            return row
        owner = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        if not claim(db, task.key, owner):
            return _row(task, "claimed elsewhere")
        row = _run_here(task, target, lambda run_id: db.runs.find_one({"_id": run_id}))
        db.sweep_claims.update_one({"_id": task.key, "owner": owner["owner"]},
                                   {"$set": {"state": "done" if row["status"] == "COMPLETED" else "failed"}})
    return row


def run_group(tasks: list[Task]) -> list[dict]:
    """One fused training (ablations/fused_group.py) for the seeds not stored of a cell, or of two cells that
    differ only in ``ema`` (EMA never changes training: the EMA cell's group leaves its EMA-off twins too);
    then each seed of each cell is evaluated and recorded as its own run from its checkpoint."""
    rows = [row for task in tasks if (row := stored_row(task))]
    done = {(row["cell"], row["seed"]) for row in rows}
    pending = [task for task in tasks if (task.cell, task.seed) not in done]
    if not pending:
        return rows
    lead = next((task for task in pending if task.ema), pending[0])
    twins = lead.ema and not all(task.ema for task in pending)
    seeds = ",".join(map(str, sorted({task.seed for task in pending})))
    words = [w for w in lead.words if not w.startswith("seed=")]
    with tempfile.TemporaryDirectory(prefix="fused-") as out:
        started = time.time()
        trained = subprocess.run([sys.executable, str(GROUP_PY), "--seeds", seeds, "--out", out,
                                  *(["--ema-off-twins"] if twins else []), "with", *words],
                                 capture_output=True, text=True, preexec_fn=_die_with_parent, env=os.environ | lead.env)
        if trained.returncode != 0:
            print(f"cell {lead.cell} seeds {seeds}: fused training failed:\n"
                  f"{(trained.stderr or trained.stdout)[-2000:]}", file=sys.stderr)
            return rows + [_row(task, "FAILED", wall_s=time.time() - started) for task in pending]
        for task in pending:
            path = fused_group.member_checkpoint(Path(out), task.seed, ema_off_twin=twins and not task.ema)
            rows.append(run_cell(replace(task, words=[*task.words, f"fused_checkpoint={str(path)!r}"])))
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


def tasks_for(args, with_words: list[str], target: store.Target) -> list[Task]:
    cells = plans.build(args.plan, args.seeds, with_words, args.only, fuse=args.fuse)
    id_words = [w for w in with_words if not w.startswith("threads=")] + (["fused=True"] if args.fuse else [])
    sid = plans.sweep_id(args.plan, args.only, id_words, cells[0])
    threads = [] if any(w.startswith("threads=") for w in with_words) else [f"threads={args.threads}"]
    tasks = []
    for c in cells:
        flips = [f"{k}={v!r}" for k, v in c.overrides.items()]
        kept = [w for w in with_words if w.split("=")[0] not in c.overrides]  # a flip replaces the baseline's word
        fused = ["fused=True"] if c.fused else []
        words = [*kept, *flips, f"seed={c.seed}", f"sweep_id={sid!r}", f"cell={c.name!r}", *threads, *fused]
        training = config_hash(c.config.replace(seed=0, ema=False), c.precision, True) if c.fused else None
        tasks.append(Task(sid, c.name, c.seed, c.key, words, args.mongo, target.db_name, args.journal_only,
                          args.pack, _refusal(c), training_key=training, ema=c.config.ema))
    return tasks


def _refusal(cell: plans.Cell) -> str | None:
    """Why this machine cannot run ``cell`` (e.g. a `gpu` cell on a CPU), or None when it can."""
    try:
        plans.planned_precision(cell.config, cell.precision)
        return None
    except ValueError as exc:
        return str(exc)


def execute(tasks: list[Task], args) -> list[dict]:
    """Here (one at a time, or ``--pack`` at a time, under CUDA MPS with ``--mps``), or on Dask: a
    LocalCluster of ``--workers`` or the ``--scheduler``'s cluster."""
    if not args.workers and not args.scheduler:
        with contextlib.ExitStack() as stack:
            if args.mps:
                work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mps-")))
                mps_env = stack.enter_context(cuda_mps.serving(work))
                for task in tasks:
                    task.env = mps_env
            # Each cell (or fused group) is a subprocess, so threads are enough to keep `pack` of them running.
            jobs = jobs_of(tasks)
            with ThreadPoolExecutor(max_workers=args.pack) as pool:
                done = tqdm(pool.map(run_job, jobs), total=len(jobs), desc="cells" if len(jobs) == len(tasks)
                            else "cells and fused groups", unit="job")
                return [row for rows in done for row in rows]
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if args.scheduler:
        client = Client(args.scheduler)
    else:
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    futures = [client.submit(run_cell, t, key=f"{t.cell}-{t.seed}-{t.key}", retries=1, pure=False) for t in tasks]
    rows = []
    for future in tqdm(as_completed(futures), total=len(futures), desc="cells", unit="cell"):
        try:
            rows.append(future.result())
        except Exception as exc:  # a worker died twice on this cell: report it, keep the others
            task = tasks[futures.index(future)]
            rows.append({"cell": task.cell, "seed": task.seed, "status": f"ERROR {type(exc).__name__}",
                         "run_id": None, "fid": None, "wall_s": 0.0})
    client.close()
    if cluster is not None:
        cluster.close()
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'cell':<34}{'seed':>5}  {'status':<18}{'run':>5}{'FID':>10}{'wall s':>9}")
    for r in sorted(rows, key=lambda r: (r["cell"], r["seed"])):
        fid = f"{r['fid']:.1f}" if r.get("fid") is not None else "-"
        print(f"{r['cell']:<34}{r['seed']:>5}  {r['status']:<18}{r['run_id'] or '-':>5}{fid:>10}{r['wall_s']:>9.0f}")


def _positive(what: str):
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: valid values are integers >= 1")
        return int(text)
    return parse

def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    words = argv[argv.index("with") + 1:] if "with" in argv else []
    head = argv[:argv.index("with")] if "with" in argv else argv
    p = argparse.ArgumentParser(prog="python ablations/sweep.py", description="Run an ablation plan x seeds.",
                                epilog="Everything after `with` is passed to ablations/run.py "
                                       "(named configs, key=value).")
    p.add_argument("--plan", choices=plans.PLANS, default="ofat")
    p.add_argument("--seeds", default="0", type=plans.comma_integers("seeds"))
    p.add_argument("--only", type=lambda s: s.split(","), help=f"toggles to vary, from {', '.join(plans.TOGGLES)}")
    p.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")
    p.add_argument("--print-id", action="store_true", help="print only the sweep id and run nothing")
    p.add_argument("--workers", type=int, default=0, help="run on a Dask LocalCluster of N worker processes")
    p.add_argument("--scheduler", help="run on an existing Dask cluster, e.g. tcp://HOST:8786")
    p.add_argument("--pack", type=_positive("pack"), default=1,
                   help="run K cells at a time on this machine's device, each its own process (default 1)")
    p.add_argument("--mps", action="store_true",
                   help="with --pack on a GPU: run the packed processes under a CUDA MPS daemon of the sweep's own")
    p.add_argument("--fuse", action="store_true",
                   help="train each cell's seeds as one network (core/fused.py); dropout cells train alone")
    p.add_argument("--journal-only", action="store_true",
                   help="no database: runs go to the local journal (then `python -m ablations.store bundle`/`sync`)")
    p.add_argument("-m", "--mongo", help="mongodb://HOST:PORT[/DB] (default: $ABLATIONS_MONGO_URL or local)")
    args = p.parse_args(head)
    if args.pack > 1 and (args.workers or args.scheduler):
        p.error(f"invalid --pack {args.pack} with --workers/--scheduler: pack runs cells on this machine's "
                "device, Dask on its workers; choose one")
    if args.fuse and (args.workers or args.scheduler):
        p.error("invalid --fuse with --workers/--scheduler: a fused group trains on this machine's device; "
                "valid is --fuse alone or with --pack")
    if args.mps and args.pack < 2:
        p.error(f"invalid --mps with --pack {args.pack}: MPS lets packed runs overlap; valid with --pack K >= 2")
    if args.mps:
        cuda_mps.require(p.error)
    sharing = args.workers or (args.pack if args.pack > 1 else 0)
    args.threads = max(1, (os.cpu_count() or 1) // sharing) if sharing else 0
    return args, words



def main(argv: list[str] | None = None) -> int:
    args, words = parse_args(sys.argv[1:] if argv is None else argv)
    target = store.resolve(args.mongo)
    try:
        tasks = tasks_for(args, words, target)
    except ValueError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    if args.print_id:
        print(tasks[0].sweep_id)
        return 0
    print(f"sweep {tasks[0].sweep_id}: plan {args.plan}, {len(tasks) // len(args.seeds)} configs x "
          f"{len(args.seeds)} seeds = {len(tasks)} runs")
    if args.dry_run:
        for t in tasks:
            print(f"  {t.cell:<34} seed {t.seed:<4} with {' '.join(t.words)}")
        return 0
    if not args.journal_only:
        store.ensure_server(target)
    rows = execute(tasks, args)
    print_table(rows)
    refused = next((t.refusal for t in tasks if t.refusal), None)
    if any(r["status"] == "not run here" for r in rows):
        print(f"Cells not stored were not run: this machine cannot ({refused}).", file=sys.stderr)
    print(f"sweep id: {tasks[0].sweep_id}   (python analysis/report.py --sweep {tasks[0].sweep_id})")
    return 0 if all(r["status"] in ("COMPLETED", "stored", "claimed elsewhere") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
