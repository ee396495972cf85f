"""The same sweep one run at a time and packed K at a time on one device: speed-up, and equality.

    python benchmarks/suite.py --pack 6 --mps --out benchmarks/device/suite-h100.json -- --seeds 0,1,2 with gpu \
        train_steps=2000
    python benchmarks/suite.py --pack 2 -- --only attention --seeds 0 with smoke      # a quick check on a CPU
    python benchmarks/suite.py --pack 6 --mps --fuse -- --seeds 0,1,2 with gpu train_steps=2000

Everything after ``--`` goes to ``ablations/sweep.py``. Both sweeps run journal-only (no database),
each into a fresh ``ABLATIONS_HOME`` under ``--work``, with the same torch threads (the machine's
cores / K, since thread counts change CPU reductions), and each is timed from the start to the end
of its ``sweep.py`` process: start-up, compilation and evaluation included. The JSON holds
``suite_speedup_vs_sequential`` (sequential wall / packed wall) and whether every packed run equals
its solo twin bit for bit (result, every metric but throughput, final weights), and, to say what holds
the speed-up back, the median seconds of each phase of a run in either sweep (:func:`phase_medians`).

``--mps`` runs the packed sweep with ``--mps``: under a CUDA MPS daemon of its own, so that the K
processes' kernels can overlap on the GPU instead of taking turns. ``--fuse`` runs it with ``--fuse``
(each cell's seeds, with the cells differing only in ema or schedule, trained as one network): its runs
then agree with their solo twins up to rounding, and the JSON says how far (``largest_loss_rel_diff``,
``largest_fid_rel_diff``).

``--packed-only`` skips the sequential sweep: the JSON then holds the packed wall and phase medians, no speed-up
and no equality. That packed half is written as soon as the packed sweep ends, before the sequential one
begins. Two or more such results at different ``train_steps`` are what ``benchmarks/budget.py --choose``
projects a fused suite from (a line through their walls): a fused suite of 18 runs cannot also afford its
sequential twin within one device call.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch

from ablations import cuda_mps
from ablations.record import FINAL_WEIGHTS, TRAIN_METRICS
from benchmarks.run import machine
from core.arguments import output_file
from core.checkpoint import load_weights

SWEEP = Path(__file__).resolve().parent.parent / "ablations" / "sweep.py"
THROUGHPUT = TRAIN_METRICS[1]  # depends on the machine's load, so it is left out of the equality


def journal_records(home: Path) -> dict:
    """Per cell and seed ("baseline/0"), the deterministic record of every journal-only run under ``home``:
    its result, its metrics but throughput, and its final model weights as bytes."""
    records = {}
    for run_dir in sorted(home.glob("journal/*/offline/[0-9]*")):
        config = json.loads((run_dir / "config.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
        weights = load_weights(run_dir / FINAL_WEIGHTS)["model"]
        records[f"{config['cell']}/{config['seed']}"] = {
            "result": json.loads((run_dir / "run.json").read_text())["result"],
            "metrics": {k: v["values"] for k, v in metrics.items() if k != THROUGHPUT},
            "weights": {k: v.cpu().numpy().tobytes() for k, v in weights.items()}}
    return records


def phase_medians(home: Path, sweep_s: float) -> dict:
    """Median seconds, over the journal-only runs under ``home``, of each phase a run records (train, sample,
    evaluate, heldout), of the whole run (Sacred's start to stop: those, the real-data FID floor and the
    artifacts) and, as ``process``, of the sweep's wall ``sweep_s`` a run: the whole run plus a process's
    start-up and the sweep's own work, divided among the runs that shared it."""
    runs = []
    for run_dir in sorted(home.glob("journal/*/offline/[0-9]*")):
        run = json.loads((run_dir / "run.json").read_text())
        whole = datetime.fromisoformat(run["stop_time"]) - datetime.fromisoformat(run["start_time"])
        runs.append(json.loads((run_dir / "info.json").read_text())["wall_time_s"] | {"run": whole.total_seconds()})
    medians = {phase: statistics.median(r[phase] for r in runs) for phase in runs[0]}
    return medians | {"process": sweep_s / len(runs)}


def timed_sweep(sweep_args: list[str], pack: int, threads: int, home: Path, env: dict) -> float:
    """Wall seconds of one journal-only sweep into ``home``; raises when a cell did not complete."""
    cmd = [sys.executable, str(SWEEP), "--pack", str(pack), "--journal-only", *sweep_args, f"threads={threads}"]
    started = time.perf_counter()
    out = subprocess.run(cmd, env=env | {"ABLATIONS_HOME": str(home)}, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise RuntimeError(f"the sweep with --pack {pack} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return wall


def compare(packed: dict, solo: dict) -> dict:
    """Which packed runs equal their solo twins bit for bit, part by part; and, for runs that need not (fused
    ones), the largest relative difference of a logged training loss and of the FID from their twins'."""
    same = {key: {part: packed[key][part] == solo.get(key, {}).get(part) for part in ("result", "metrics", "weights")}
            for key in packed}
    twins = [(packed[key], solo[key]) for key in packed if key in solo]

    def largest(pairs) -> float | None:
        return max((abs(a - b) / abs(b) for a, b in pairs if b), default=None)
    return {"runs": len(packed), "solo_runs": len(solo), "bitwise_equal": all(all(s.values()) for s in same.values())
            and packed.keys() == solo.keys(), "per_run": same,
            "largest_loss_rel_diff": largest(pair for p, s in twins for pair in
                                             zip(p["metrics"]["train.loss"], s["metrics"]["train.loss"])),
            "largest_fid_rel_diff": largest((p["result"]["fid"], s["result"]["fid"]) for p, s in twins)}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    own, sweep_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=int, default=6)
    parser.add_argument("--mps", action="store_true", help="run the packed sweep under CUDA MPS")
    parser.add_argument("--fuse", action="store_true",
                        help="run the packed sweep with --fuse: fused groups (see sweep.py --fuse)")
    parser.add_argument("--packed-only", action="store_true", help="only the packed sweep: its wall and phase "
                        "medians, for budget.py --choose's line through several budgets (no speed-up, no equality)")
    parser.add_argument("--work", type=Path, help="where the two journals go (default: a temporary directory)")
    parser.add_argument("--out", type=output_file("--out"), help="write the result JSON here")
    args = parser.parse_args(own)
    if args.pack < 2:
        parser.error(f"invalid --pack {args.pack}: valid values are integers >= 2 (1 is the sequential baseline)")
    if args.mps:
        cuda_mps.require(parser.error)
    if "with" not in sweep_args:
        parser.error(f"invalid sweep arguments {sweep_args}: valid ones end in `with` and a scale, after `--`")
    work = args.work or Path(tempfile.mkdtemp(prefix="suite-"))
    threads = max(1, (os.cpu_count() or 1) // args.pack)
    packed_s = timed_sweep([*(["--mps"] if args.mps else []), *(["--fuse"] if args.fuse else []), *sweep_args],
                           args.pack, threads, work / "packed", dict(os.environ))
    config = json.loads(next((work / "packed").glob("journal/*/offline/[0-9]*/config.json")).read_text())
    result = {"command": "python benchmarks/suite.py " + " ".join(argv), "machine": machine(),
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "pack": args.pack,
              "mps": args.mps, "fuse": args.fuse, "threads_per_run": threads, "train_steps": config["train_steps"],
              "packed_s": packed_s, "phase_medians_s": {"packed": phase_medians(work / "packed", packed_s)},
              "runs": len(list((work / "packed").glob("journal/*/offline/[0-9]*")))}
    write(result, args.out)  # the packed half at once: a device call cut short in the sequential sweep keeps it
    if args.packed_only:
        print(f"{result['runs']} runs packed x{args.pack}: {packed_s:.0f} s at {config['train_steps']:,} steps; median "
              "seconds a run: " + ", ".join(f"{k} {v:.1f}" for k, v in result["phase_medians_s"]["packed"].items()))
        return result
    sequential_s = timed_sweep(sweep_args, 1, threads, work / "sequential", dict(os.environ))
    equality = compare(journal_records(work / "packed"), journal_records(work / "sequential"))
    phases = result["phase_medians_s"] | {"sequential": phase_medians(work / "sequential", sequential_s)}
    result |= {"sequential_s": sequential_s, "suite_speedup_vs_sequential": sequential_s / packed_s,
               "phase_medians_s": phases} | equality
    print(f"{equality['runs']} runs: sequential {sequential_s:.0f} s, packed x{args.pack} {packed_s:.0f} s "
          f"-> {result['suite_speedup_vs_sequential']:.2f}x; packed runs equal solo runs bit for bit: "
          f"{equality['bitwise_equal']}" + (f" (fused: largest relative difference of a logged loss "
                                            f"{equality['largest_loss_rel_diff']:.2g}, of a FID "
                                            f"{equality['largest_fid_rel_diff']:.2g})" if args.fuse else ""))
    print("median seconds a run, solo -> packed: " + ", ".join(
        f"{k} {phases['sequential'][k]:.1f} -> {v:.1f}" for k, v in phases["packed"].items()))
    return write(result, args.out)


def write(result: dict, out: Path | None) -> dict:
    """``result``, also written to ``out`` where one is named (less its per-run equality)."""
    if out:
        out.write_text(json.dumps({k: v for k, v in result.items() if k != "per_run"}, indent=1))
    return result


if __name__ == "__main__":
    main()
