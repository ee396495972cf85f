"""Which precision trains faster on this CPU: the measurement behind ``core.precision``'s rule.

    python benchmarks/precision.py [--repeats 7] [--out benchmarks/precision.json]

In one process, alternating the two precisions inside every repeat and quoting medians, it times
a 2048^2 matmul and one training step of the seed model at batches 32 (the `small` scale) and 128,
in fp32 and in bf16 autocast (forced). It prints what ``amp=True`` resolves to here ("auto": bf16
only with AMX) and whether the measured speeds agree with that choice.
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

from benchmarks.run import machine, matmul_peak, timed
from core.arguments import output_file
from core.config import Config
from core.diffusion import DiffusionProcess
from core.precision import cpu_has_amx, resolve_precision

CPU = torch.device("cpu")


def step_seconds(batch: int, repeats: int) -> dict[str, float]:
    """Median seconds of one Adam step at ``batch`` in fp32 and in forced bf16, alternating."""
    processes = {p: DiffusionProcess(Config(), device=CPU, precision=p) for p in ("fp32", "bf16")}
    x0 = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1  # (B, C, H, W)
    times = {p: [] for p in processes}
    for _ in range(repeats + 1):  # the first round warms up (oneDNN picks its kernels)
        for p, process in processes.items():
            times[p].append(timed(lambda: process.train_step(x0), CPU))
    return {p: statistics.median(t[1:]) for p, t in times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=output_file("--out"))
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"invalid --repeats={args.repeats}: valid values are integers >= 1")
    peaks = {p: matmul_peak(CPU, dtype) for p, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    steps = {batch: step_seconds(batch, args.repeats) for batch in (32, 128)}
    faster = "bf16" if all(s["bf16"] < s["fp32"] for s in steps.values()) else "fp32"
    result = {"command": "python benchmarks/precision.py", "machine": machine(), "amx": cpu_has_amx(),
              "matmul_gflop_s": peaks, "train_step_s": steps, "measured_faster": faster,
              "auto_precision": resolve_precision(True, CPU), "threads": torch.get_num_threads()}
    result["rule_agrees"] = result["auto_precision"] == faster
    print(f"matmul 2048^2: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s (AMX: {cpu_has_amx()})")
    for batch, s in steps.items():
        print(f"training step, batch {batch:>3}: fp32 {s['fp32']:.3f} s, bf16 {s['bf16']:.3f} s "
              f"(bf16 / fp32 = {s['bf16'] / s['fp32']:.2f})")
    print(f"amp=True runs in {result['auto_precision']} here; measured faster: {faster}; "
          f"{'the rule agrees' if result['rule_agrees'] else 'THE RULE DISAGREES'}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
