"""Training steps of the smoke config (at its former batch of 32) in several processes at once, each with its
own torch threads: what sharing the cores costs, and why `make test` (tests/conftest.py) and packed sweeps
give each process cores / processes threads.

    python benchmarks/shared_cores.py [--processes 1,2] [--threads 1,2] [--steps 20]

Prints one JSON line per (processes, threads): each process's seconds for ``--steps`` steps (after 3 warm-up
steps), timed inside it, so start-up is not counted.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from core.arguments import integer_at_least, positive_integers
from core.config import SCALES, Config
from core.data import as_tensor, iterate_batches, mnist
from core.diffusion import DiffusionProcess


# The batch that the figures quoted in the README and tests/conftest.py were measured at (smoke's until 5c878ac).
BATCH = 32


def time_steps(threads: int, steps: int) -> float:
    """Seconds of ``steps`` training steps of a fresh smoke-config process with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    process = DiffusionProcess(Config(**SCALES["smoke"] | {"batch_size": BATCH}))
    batches = iterate_batches(as_tensor(mnist(train=True)), process.config.batch_size, seed=0)
    for _ in range(3):  # oneDNN picks its kernels
        process.train_step_async(next(batches)).item()
    started = time.perf_counter()
    for _ in range(steps):
        process.train_step_async(next(batches)).item()
    return time.perf_counter() - started


def side_by_side(processes: int, threads: int, steps: int) -> list[float]:
    """Each process's seconds, ``processes`` of them started together."""
    command = [sys.executable, __file__, "--one", str(threads), "--steps", str(steps)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    return [round(float(p.communicate()[0].split()[-1]), 2) for p in procs]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=positive_integers("--processes"), default=[1, 2],
                        help="comma-separated process counts")
    parser.add_argument("--threads", type=positive_integers("--threads"), default=[1, 2],
                        help="comma-separated torch thread counts")
    parser.add_argument("--steps", type=integer_at_least("--steps"), default=20)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: time with this many threads
    args = parser.parse_args(argv)
    if args.one:
        print(time_steps(args.one, args.steps))
        return []
    rows = []
    for processes in args.processes:
        for threads in args.threads:
            rows.append({"processes": processes, "threads": threads, "steps": args.steps,
                         "seconds": side_by_side(processes, threads, args.steps)})
            print(json.dumps(rows[-1]))
    return rows


if __name__ == "__main__":
    main()
