"""What a short training budget buys: FID of the baseline model at several budgets, one seed each.

    python benchmarks/budget.py --budgets 200x128@1e-4,400x64@1e-4,200x128@1e-3 [--seeds 0] [--out FILE]

A budget is ``STEPSxBATCH@LR``. Every budget trains the baseline config (attention on, no EMA,
cosine, the default AMP and memory layout) from the same seed, samples with the `small` scale's
evaluation settings and reports FID, recall and the wall times. This is how the `small` scale's
budget was chosen: the cheapest one whose FID still ranks it clearly above half of itself.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from core.config import Config
from core.data import as_tensor, mnist
from core.diffusion import DiffusionProcess
from core.evaluation import sample_and_evaluate
from core.train import train


def parse_budget(text: str) -> dict:
    """``"400x64@1e-3"`` -> ``{"train_steps": 400, "batch_size": 64, "lr": 0.001}``."""
    try:
        shape, lr = text.split("@")
        steps, batch = shape.split("x")
        return {"train_steps": int(steps), "batch_size": int(batch), "lr": float(lr)}
    except ValueError:
        raise ValueError(f"invalid budget {text!r}: valid budgets look like STEPSxBATCH@LR, e.g. 400x64@1e-3") from None


def run_budget(budget: dict, seed: int, images: torch.Tensor, **overrides) -> dict:
    config = Config(**budget, seed=seed, **overrides)
    process = DiffusionProcess(config)
    started = time.perf_counter()
    train(process, images)
    wall_s = {"train": time.perf_counter() - started}
    _, metrics = sample_and_evaluate(process, seed, wall_s)
    return budget | {"seed": seed, "fid": metrics["fid"], "recall": metrics["recall"],
                     "train_s": wall_s["train"], "sample_s": wall_s["sample"], "device": str(process.device)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", required=True, help="comma-separated STEPSxBATCH@LR")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--sampler-steps", type=int, default=Config().sampler_steps)
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    budgets = [parse_budget(b) for b in args.budgets.split(",")]
    images = as_tensor(mnist(train=True))
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for budget in budgets:
            row = run_budget(budget, seed, images, sampler_steps=args.sampler_steps)
            rows.append(row)
            print(f"{row['train_steps']:>6} x {row['batch_size']:<4} lr {row['lr']:<7g} seed {seed}: "
                  f"FID {row['fid']:8.1f}  recall {row['recall']:.2f}  train {row['train_s']:6.1f} s  "
                  f"sample {row['sample_s']:5.1f} s  ({row['device']})", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
