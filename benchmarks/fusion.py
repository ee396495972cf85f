"""Training K seeds as one stacked network (core/fused.py) against K solo runs one after another.

    python benchmarks/fusion.py --members 1,3,6,18 --out fusion.json                 # on a GPU, the gpu scale
    python benchmarks/fusion.py --members 1,3 --steps 6 --set device=cpu --out /tmp/f.json   # a CPU check

For each K it times training steps of one solo process and of a fused group of K members, in one
process, alternating the two inside every repeat and quoting medians; ``fusion_speedup_vs_sequential``
is K solo steps over one fused step. On CUDA both replay their step as a CUDA graph after the same
warm-up. It also checks, on real MNIST batches, how far a fused member is from its solo twin after
``--agree-steps`` steps (its loss and weights) and that a fused group repeats itself bit for bit.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import datetime

import torch

from benchmarks.budget import scale_fields
from benchmarks.run import machine, timed
from core.arguments import output_file
from core.config import SCALES, Config
from core.data import as_tensor, mnist
from core.diffusion import GRAPH_WARMUP_STEPS, DiffusionProcess
from core.fused import FusedTraining, check_fusable, train_fused
from core.train import train


def step_times(config: Config, k: int, steps: int, repeats: int, cuda_graphs: bool = True) -> dict:
    """Median seconds of ``steps`` solo steps and of ``steps`` fused steps of ``k`` members, per step."""
    solo = DiffusionProcess(config)
    fused = FusedTraining([DiffusionProcess(config.replace(seed=config.seed + i)) for i in range(k)])
    solo.cuda_graphs = solo.cuda_graphs and cuda_graphs
    fused.cuda_graphs = fused.cuda_graphs and cuda_graphs
    x0 = torch.rand(config.batch_size, config.channels, config.image_size, config.image_size,
                    device=solo.device) * 2 - 1  # (B, C, H, W) in [-1, 1]
    for _ in range(GRAPH_WARMUP_STEPS + 2):  # the eager warm-up, the capture and one replay
        solo.train_step(x0)
        fused.train_step_async([x0] * k).tolist()
    times = {"solo": [], "fused": []}
    for _ in range(repeats):
        times["solo"].append(timed(lambda: [solo.train_step_async(x0) for _ in range(steps)], solo.device) / steps)
        times["fused"].append(timed(lambda: [fused.train_step_async([x0] * k) for _ in range(steps)],
                                    solo.device) / steps)
    solo_s, fused_s = statistics.median(times["solo"]), statistics.median(times["fused"])
    peak = torch.cuda.max_memory_allocated() / 2**20 if solo.device.type == "cuda" else None
    return {"members": k, "cuda_graphs": fused.cuda_graphs, "solo_step_s": solo_s, "fused_step_s": fused_s,
            "fusion_speedup_vs_sequential": k * solo_s / fused_s, "peak_cuda_mib": peak}


def time_group(config: Config, k: int, steps: int, repeats: int, cuda: bool) -> list[dict]:
    """The timing of one K; on CUDA, where capturing the step as a graph fails, the failure and an eager timing."""
    rows = []
    for graphs in (True, False) if cuda else (True,):
        try:
            return rows + [step_times(config, k, steps, repeats, cuda_graphs=graphs)]
        except (Exception if cuda else ()) as error:  # noqa: BLE001 - on a GPU, recorded, and tried eagerly
            rows.append({"members": k, "cuda_graphs": graphs, "error": f"{type(error).__name__}: {error}"})
    return rows


def agreement(config: Config, images: torch.Tensor, steps: int) -> dict:
    """Member 0 of a 2-member group against its solo twin after ``steps`` steps; and the group run twice."""
    config = config.replace(train_steps=steps, log_every=steps)
    solo, solo_loss = DiffusionProcess(config), []
    train(solo, images, log=lambda name, value, step: solo_loss.append(value) if name == "train.loss" else None)
    groups = []
    for _ in range(2):
        members = [DiffusionProcess(config.replace(seed=config.seed + i)) for i in range(2)]
        losses: list[float] = []
        train_fused(FusedTraining(members), images,
                    log=lambda i, n, v, s: losses.append(v) if (i, n) == (0, "train.loss") else None)
        groups.append((members, losses))
    (first, fused_loss), (again, _) = groups
    start = DiffusionProcess(config).model.parameters()
    return {"steps": steps, "precision": solo.precision, "loss_solo": solo_loss[-1], "loss_fused": fused_loss[-1],
            # how far the member is from its twin, as a share of how far the twin moved from their common start
            "weight_diff_over_moved": distance(first[0].model, solo.model) / distance(solo.model, start),
            "repeats_bitwise": all(torch.equal(a, b) for m, n in zip(first, again)
                                   for a, b in zip(m.model.parameters(), n.model.parameters()))}


def distance(model: torch.nn.Module, other) -> float:
    """The L2 distance between two sets of weights, all tensors together."""
    others = other.parameters() if isinstance(other, torch.nn.Module) else other
    return torch.cat([(a - b).flatten() for a, b in zip(model.parameters(), others, strict=True)]).norm().item()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="1,3,6,18", help="group sizes K to time (comma-separated)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="gpu")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="change fields of the scale")
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--agree-steps", type=int, default=50)
    parser.add_argument("--out", type=output_file("--out"), required=True)
    args = parser.parse_args(argv)
    try:
        members = [int(k) for k in args.members.split(",")]
        if min(members) < 1 or args.steps < 1 or args.repeats < 1 or args.agree_steps < 1:
            raise ValueError
    except ValueError:
        sys.exit(f"invalid --members {args.members!r}, --steps, --repeats or --agree-steps: "
                 "valid values are positive integers")
    try:
        config = Config(**scale_fields(args.scale, args.set, None))
        probe = DiffusionProcess(config)
        check_fusable([probe])  # a config that cannot be fused is refused by name, before any timing
    except ValueError as error:
        sys.exit(str(error))
    result = {"date": datetime.now().isoformat(timespec="seconds"), "machine": machine(),
              "config": config.to_dict(), "precision": probe.precision, "rows": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for k in members:
        result["rows"] += (rows := time_group(config, k, args.steps, args.repeats, probe.device.type == "cuda"))
        for row in rows:
            print(f"K={k:>3}  " + (row["error"] if "error" in row else
                  f"solo {row['solo_step_s'] * 1e3:7.2f} ms/step  fused {row['fused_step_s'] * 1e3:7.2f} ms/step  "
                  f"speed-up {row['fusion_speedup_vs_sequential']:.2f}x"), flush=True)
        args.out.write_text(json.dumps(result, indent=2))  # after every K: a call cut short keeps the rest
    result["agreement"] = agreement(config, as_tensor(mnist(train=True)), args.agree_steps)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["agreement"]))
    return result


if __name__ == "__main__":
    main()
