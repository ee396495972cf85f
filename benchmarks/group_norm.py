"""The CPU's bf16 GroupNorm over channels_last tensors, natively and by ``core.fastpath.GroupNorm``'s fp32 route.

    python benchmarks/group_norm.py [--repeats 15] [--threads 1] [--out benchmarks/group-norm.json]

In one process, alternating the two ways inside every repeat and quoting medians (these machines are
noisy), it times without autograd:
  1. each GroupNorm shape of the seed model at batch 64 (8 groups), through ``core.fastpath.GroupNorm``:
     native bf16 against its route (fp32, then rounded to bf16) forced on whatever the group's width,
     and whether the two outputs are equal bit for bit;
  2. one network evaluation of the seed model at batches 64 and 256 (bf16 autocast, channels_last),
     with the route on and off: what a sampler step costs either way, and whether the outputs are equal.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys

import torch
from torch import nn

from benchmarks.run import machine, timed
from core.arguments import integer_at_least, output_file
from core.diffusion import DiffusionProcess
from core.fastpath import GroupNorm

CPU = torch.device("cpu")
SHAPES = [(32, 28), (64, 14), (128, 7), (256, 14), (128, 28)]  # (channels, side) of the seed model's norms


def alternating(ways: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each zero-argument function, called in turn ``repeats`` times after a warm-up round."""
    times = {name: [] for name in ways}
    for _ in range(repeats + 1):
        for name, fn in ways.items():
            times[name].append(timed(fn, CPU))
    return {name: statistics.median(t[1:]) for name, t in times.items()}


@contextlib.contextmanager
def routed(on: bool, max_channels_per_group: int = GroupNorm.MAX_CHANNELS_PER_GROUP):
    """``core.fastpath.GroupNorm`` with its route on or off, and taken up to ``max_channels_per_group``."""
    saved = GroupNorm.route, GroupNorm.MAX_CHANNELS_PER_GROUP
    GroupNorm.route, GroupNorm.MAX_CHANNELS_PER_GROUP = on, max_channels_per_group
    try:
        yield
    finally:
        GroupNorm.route, GroupNorm.MAX_CHANNELS_PER_GROUP = saved


def norm_rows(repeats: int) -> list[dict]:
    """Each shape natively and by the route, forced on whatever its group width (to show where it pays)."""
    rows = []
    for channels, side in SHAPES:
        norm = GroupNorm(8, channels)
        nn.init.normal_(norm.weight), nn.init.normal_(norm.bias)
        x = torch.randn(64, channels, side, side).bfloat16().to(memory_format=torch.channels_last)  # (B, C, H, W)

        def normalise(route: bool) -> torch.Tensor:
            with routed(route, max_channels_per_group=channels):
                return norm(x)

        seconds = alternating({"native": lambda: normalise(False), "route": lambda: normalise(True)}, repeats)
        rows.append({"channels": channels, "side": side, "channels_per_group": channels // 8,
                     "native_ms": 1e3 * seconds["native"], "route_ms": 1e3 * seconds["route"],
                     "equal": torch.equal(normalise(False), normalise(True))})
    return rows


def network_rows(repeats: int) -> list[dict]:
    """One network evaluation with the route on (as it runs) and off."""
    process = DiffusionProcess(device=CPU, amp=True, channels_last=True, precision="bf16", seed=0)
    denoiser, rows = process._denoiser(), []
    for batch in (64, 256):
        x = torch.randn(batch, 1, 28, 28).to(memory_format=torch.channels_last)  # (B, C, H, W)
        t = torch.full((batch,), 500)

        def evaluate(route: bool) -> torch.Tensor:
            with routed(route):
                return denoiser(x, t)

        seconds = alternating({"on": lambda: evaluate(True), "off": lambda: evaluate(False)}, repeats)
        rows.append({"batch": batch, "route_on_s": seconds["on"], "route_off_s": seconds["off"],
                     "speedup": seconds["off"] / seconds["on"], "equal": torch.equal(evaluate(True), evaluate(False))})
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=integer_at_least("--repeats"), default=15)
    parser.add_argument("--threads", type=integer_at_least("--threads"), default=1,
                        help="torch threads (default 1: what a test worker has)")
    parser.add_argument("--out", type=output_file("--out"), help="also write the results here, with the command")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        command = "python benchmarks/group_norm.py " + " ".join(sys.argv[1:] if argv is None else argv)
        result = {"command": command.strip(), "machine": machine(), "group_norm": norm_rows(args.repeats),
                  "network": network_rows(args.repeats)}
    for row in result["group_norm"]:
        print(f"GroupNorm (64, {row['channels']}, {row['side']}, {row['side']}), {row['channels_per_group']} a group: "
              f"native {row['native_ms']:.2f} ms, fp32 route {row['route_ms']:.2f} ms, equal {row['equal']}")
    for row in result["network"]:
        print(f"network at batch {row['batch']}: route on {row['route_on_s']:.4f} s, off {row['route_off_s']:.4f} s "
              f"({row['speedup']:.2f}x), equal {row['equal']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
