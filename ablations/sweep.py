"""Ablation sweeps: a plan x seeds, each cell a normal Sacred run of ``ablations/run.py``.

    python ablations/sweep.py --plan ofat --seeds 0,1,2 with small           # 6 configs x 3 seeds, here
    python ablations/sweep.py --plan full --seeds 0 --only attention,ema with smoke
    python ablations/sweep.py --plan ofat --seeds 0,1 --dry-run with small
    python ablations/sweep.py --plan ofat --seeds 0,1 --workers 2 with smoke  # a Dask LocalCluster
    python ablations/sweep.py --plan ofat --seeds 0,1 --scheduler tcp://HOST:8786 with paper
    python ablations/sweep.py --plan ofat --seeds 0,1,2 --pack 6 --journal-only with gpu   # 6 runs at once, no database
    python ablations/sweep.py --plan ofat --seeds 0,1,2 --fuse with gpu      # each cell's 3 seeds as one network

Idempotent: a cell x seed already COMPLETED in the store is skipped, whichever sweep stored it (the
sweep's manifest, :mod:`ablations.sweep_manifest`, keeps such a cell in this sweep's report); an
INTERRUPTED or FAILED one is resumed from its checkpoint when the journal has one, else run again.
Cells are claimed atomically in the database (collection ``sweep_claims``), so two sweeps never run
one cell twice (:mod:`ablations.jobs` runs them).

``--pack K`` runs K cells at a time on this machine's one device, each in its own process (a normal
Sacred run, with the torch threads of the CPU shared out): a process computes exactly what it would
alone, so a packed run equals the same cell run solo bit for bit. On a GPU the processes share the
chip (their kernels overlap only under CUDA MPS; see the README's "Packing"). ``--journal-only``
needs no database: runs go to the local journal, a cell COMPLETED there is skipped, and
``python -m ablations.store bundle`` packs them for ``python -m ablations.store sync`` elsewhere.

``--fuse`` trains the seeds of each cell as one stacked network (:mod:`core.fused`,
``ablations/fused_group.py``), then records each seed as its own run: a member equals its solo run up
to float rounding, not bit for bit, so fused runs are cells of their own (``fused=True`` is part of
their identity and of the sweep id). Dropout's cells cannot be fused and train alone. The cells that differ
only in ``ema`` and ``schedule`` (the baseline, its EMA cell and its linear-schedule cell) share one fused
training: EMA never changes training, and a schedule only sets the coefficients that noise a member's batch.
A fused training and each run take one of the ``--pack`` places on the device.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import psutil
from tqdm.auto import tqdm

from ablations import cuda_mps, jobs
from ablations import plan as plans
from ablations import store, sweep_manifest
from ablations.jobs import Task, jobs_of, run_cell, run_job
from ablations.record import SITTING_ENV, config_hash
from core.arguments import comma_integers, integer_at_least

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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
        # what a fused training does not depend on left out: the seed, EMA and the schedule (see fused_group.py)
        training = config_hash(c.config.replace(seed=0, ema=False, schedule="cosine"), c.precision, True) \
            if c.fused else None
        tasks.append(Task(sid, c.name, c.seed, c.key, words, args.mongo, target.db_name, args.journal_only,
                          args.pack, _refusal(c), training_key=training, ema=c.config.ema, schedule=c.config.schedule))
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
                    task.env = task.env | mps_env
            # Each cell is a subprocess, so threads are enough to keep `pack` of them running. A fused sweep's
            # jobs (a training, then its runs) all start, and their processes take turns for the `pack` places.
            units = jobs_of(tasks)
            fused = any(task.training_key for task in tasks)
            jobs.DEVICE_SLOTS = threading.BoundedSemaphore(args.pack) if fused else None
            with ThreadPoolExecutor(max_workers=len(units) if fused else args.pack) as pool:
                return gather([pool.submit(run_job, unit) for unit in units],
                              "cells and fused trainings" if fused else "cells")
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
                         "run_id": None, "result": {}, "wall_s": 0.0})
    client.close()
    if cluster is not None:
        cluster.close()
    return rows


def gather(futures: list, desc: str) -> list[dict]:
    """The jobs' rows, in the plan's order. The first Ctrl-C or SIGTERM stops the sweep (:func:`jobs.stop`): the
    runs under way checkpoint and end INTERRUPTED, and the others do not start; a second one ends it at once."""
    rows = []
    try:
        for future in tqdm(futures, desc=desc, unit="job"):
            rows += future.result()
    except KeyboardInterrupt:
        for signum in STOP_SIGNALS:  # the next one is not caught: the sweep ends, and its runs with it
            signal.signal(signum, signal.SIG_DFL)
        print(f"\nStopping the sweep: {jobs.stop()} runs (or fused trainings) end at their next step, and no "
              "other starts. Ctrl-C again to end it now.", file=sys.stderr)
        rows = [row for future in futures for row in future.result()]
    return rows


@contextlib.contextmanager
def stoppable():
    """SIGTERM (a scheduler's or `timeout`'s) stops the sweep as Ctrl-C does; the handlers are restored after."""
    jobs.STOPPED.clear()  # a sweep before this one, in this process, may have been stopped
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def record_manifest(tasks: list[Task], args, with_words: list[str], target: store.Target) -> None:
    """Write down what the sweep is made of before it runs anything (:mod:`ablations.sweep_manifest`), so that
    its report holds the cells it skips because another sweep stored them."""
    sweep = sweep_manifest.manifest(tasks[0].sweep_id, args.plan, args.only, with_words, tasks)
    if args.journal_only:
        sweep_manifest.write_journal(target.journal_dir(online=False), sweep)
        return
    with store.database(target) as db:
        sweep_manifest.record(db, sweep)


def sitting(args) -> dict:
    """This invocation of the sweep, which each run it starts records as ``info.sitting``: the report times a
    suite from ``started``, this process's start (so its start-up counts), to its runs' last stop."""
    started = datetime.fromtimestamp(psutil.Process().create_time(), timezone.utc)
    return {"id": uuid.uuid4().hex, "started": started.isoformat(), "host": socket.gethostname(),
            "pack": args.pack, "mps": args.mps, "fuse": args.fuse, "dask": bool(args.workers or args.scheduler)}


# The table's scores: FID and the classifier score of the samples, and the held-out bound (bits/dim), which
# ranks models that still draw scribbles (README: Held-out metrics); the report has every metric.
SHOWN = {"fid": ("FID", 10, ".1f"), "classifier_score": ("score", 7, ".2f"), "nll_bpd": ("bpd", 8, ".2f")}


def print_table(rows: list[dict]) -> None:
    scores = "".join(f"{name:>{width}}" for name, width, _ in SHOWN.values())
    print(f"{'cell':<34}{'seed':>5}  {'status':<18}{'run':>5}{scores}{'wall s':>9}")
    for r in sorted(rows, key=lambda r: (r["cell"], r["seed"])):
        scores = "".join(f"{'-' if r['result'].get(k) is None else format(r['result'][k], f):>{w}}"
                         for k, (_, w, f) in SHOWN.items())
        print(f"{r['cell']:<34}{r['seed']:>5}  {r['status']:<18}{r['run_id'] or '-':>5}{scores}{r['wall_s']:>9.0f}")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    words = argv[argv.index("with") + 1:] if "with" in argv else []
    head = argv[:argv.index("with")] if "with" in argv else argv
    p = argparse.ArgumentParser(prog="python ablations/sweep.py", description="Run an ablation plan x seeds.",
                                epilog="Everything after `with` is passed to ablations/run.py "
                                       "(named configs, key=value).")
    p.add_argument("--plan", choices=plans.PLANS, default="ofat")
    p.add_argument("--seeds", default="0", type=comma_integers("seeds"))
    p.add_argument("--only", type=lambda s: s.split(","), help=f"toggles to vary, from {', '.join(plans.TOGGLES)}")
    p.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")
    p.add_argument("--print-id", action="store_true", help="print only the sweep id and run nothing")
    p.add_argument("--workers", type=integer_at_least("--workers", 0), default=0,
                   help="run on a Dask LocalCluster of N worker processes")
    p.add_argument("--scheduler", help="run on an existing Dask cluster, e.g. tcp://HOST:8786")
    p.add_argument("--pack", type=integer_at_least("--pack"), default=1,
                   help="run K cells at a time on this machine's device, each its own process (default 1)")
    p.add_argument("--mps", action="store_true",
                   help="with --pack on a GPU: run the packed processes under a CUDA MPS daemon of the sweep's own")
    p.add_argument("--fuse", action="store_true",
                   help="train each cell's seeds, and the cells differing only in ema or schedule, as one network "
                        "(core/fused.py); dropout cells train alone")
    p.add_argument("--journal-only", action="store_true",
                   help="no database: runs go to the local journal (then `python -m ablations.store bundle`/`sync`)")
    store.mongo_option(p)
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
    try:
        target = store.resolve(args.mongo)  # only $ABLATIONS_MONGO_URL can fail here: the parser has checked -m
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
    try:
        record_manifest(tasks, args, words, target)
    except store.StoreUnavailable as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    this_sitting = json.dumps(sitting(args))
    for task in tasks:
        task.env = task.env | {SITTING_ENV: this_sitting}
    with stoppable():
        rows = execute(tasks, args)
    print_table(rows)
    if jobs.STOPPED.is_set():
        count = {status: sum(r["status"] == status for r in rows)
                 for status in ("INTERRUPTED", jobs.TRAINING_STOPPED, jobs.NOT_STARTED)}
        fused = f"{count[jobs.TRAINING_STOPPED]} whose fused training stopped, " if count[jobs.TRAINING_STOPPED] else ""
        print(f"Stopped: {count['INTERRUPTED']} runs INTERRUPTED, {fused}{count[jobs.NOT_STARTED]} not started. The "
              "same command resumes the interrupted runs and trainings from their checkpoints.", file=sys.stderr)
    if any(r["status"] == jobs.DATABASE_AWAY for r in rows):
        print("The database went away during the sweep: what ran is in the journal. `python -m ablations.store sync` "
              "once it answers, then the same command, finishes the sweep.", file=sys.stderr)
    refused = next((t.refusal for t in tasks if t.refusal), None)
    if any(r["status"] == "not run here" for r in rows):
        print(f"Cells not stored were not run: this machine cannot ({refused}).", file=sys.stderr)
    print(f"sweep id: {tasks[0].sweep_id}   (python analysis/report.py --sweep {tasks[0].sweep_id})")
    return 0 if all(r["status"] in ("COMPLETED", "stored", "claimed elsewhere") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
