"""What a training budget buys: FID of the baseline model at several budgets, or along one run.

    python benchmarks/budget.py --budgets 200x128@1e-4,400x64@1e-4,200x128@1e-3 [--seeds 0] [--out FILE]
    python benchmarks/budget.py --curve 2000,4000,8000,12000,16000 --scale gpu --ema both [--seeds 0] [--out FILE]

A budget is ``STEPSxBATCH@LR``. Every budget trains the baseline config (attention on, no EMA,
cosine, the default AMP and memory layout) from the same seed, samples with the `small` scale's
evaluation settings and reports FID, recall and the wall times. This is how the `small` scale's
budget was chosen: the cheapest one whose FID still ranks it clearly above half of itself.

``--curve`` trains one baseline run of ``--scale`` (EMA off, on, or both: one run each) and
evaluates it at each listed step with that scale's evaluation: FID, classifier score, the
smallest and largest class share of the samples, and the held-out bound and denoising error.
Nothing in training depends on the total number of steps (constant learning rate, data order and
noise from the run's own generators), so each point is the run of that many steps, bit for bit
(tested). This is the probe that chooses the `gpu` scale's budget.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from core.config import SCALES, Config
from core.data import as_tensor, mnist
from core.diffusion import DiffusionProcess
from core.evaluation import sample_and_evaluate
from core.likelihood import heldout_metrics
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


def evaluate_point(process: DiffusionProcess) -> dict:
    """The probe's numbers for a process at its current step (its config's sampler and N)."""
    wall_s = {}
    # Scoring draws from torch's global generator, which dropout trains with: fork it, so that training
    # goes on as if nothing had been evaluated.
    with torch.random.fork_rng(devices=[process.device] if process.device.type == "cuda" else []):
        _, metrics = sample_and_evaluate(process, process.config.seed, wall_s)
        started = time.perf_counter()
        heldout = heldout_metrics(process, process.config.n_samples)
    shares = [n / sum(metrics["class_histogram"]) for n in metrics["class_histogram"]]
    return {"step": process.step, "ema": process.config.ema, "fid": metrics["fid"], "recall": metrics["recall"],
            "classifier_score": metrics["classifier_score"], "min_class_share": min(shares),
            "max_class_share": max(shares), "nll_bpd": heldout["nll_bpd"], "nll_bpd_se": heldout["nll_bpd_se"],
            "eps_mse": heldout["eps_mse"], "sample_s": wall_s["sample"],
            "heldout_s": time.perf_counter() - started}


def learning_curve(config: Config, at_steps: list[int], images: torch.Tensor, log=print):
    """Train one run of ``config`` and evaluate it at each of ``at_steps`` (increasing); return (rows, process)."""
    process = DiffusionProcess(config.replace(train_steps=at_steps[0]))
    rows, train_s = [], 0.0
    for steps in at_steps:
        process.config = process.config.replace(train_steps=steps)  # train() stops at config.train_steps
        started = time.perf_counter()
        train(process, images)
        train_s += time.perf_counter() - started
        rows.append(evaluate_point(process) | {"train_s": train_s, "device": str(process.device)})
        r = rows[-1]
        log(f"ema={r['ema']!s:<5} step {r['step']:>6}: FID {r['fid']:8.2f}  classifier score "
            f"{r['classifier_score']:5.2f}  classes {r['min_class_share']:.1%}-{r['max_class_share']:.1%}  "
            f"nll {r['nll_bpd']:.3f} bits/dim  train {train_s:6.1f} s")
    return rows, process


def curve_main(args) -> list[dict]:
    steps = sorted(int(s) for s in args.curve.split(","))
    emas = {"off": [False], "on": [True], "both": [False, True]}[args.ema]
    images = as_tensor(mnist(train=True))
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for ema in emas:
            rows += learning_curve(Config(**SCALES[args.scale], seed=seed, ema=ema), steps, images)[0]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--budgets", help="comma-separated STEPSxBATCH@LR")
    mode.add_argument("--curve", help="comma-separated steps at which to evaluate one run per EMA setting")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--sampler-steps", type=int, default=Config().sampler_steps)
    parser.add_argument("--scale", choices=sorted(SCALES), default="gpu", help="--curve: the scale's baseline")
    parser.add_argument("--ema", choices=["off", "on", "both"], default="both", help="--curve: EMA setting(s)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = curve_main(args) if args.curve else budgets_main(args)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


def budgets_main(args) -> list[dict]:
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
    return rows


if __name__ == "__main__":
    main()
