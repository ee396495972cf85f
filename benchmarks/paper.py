"""Wall time of a `paper` run on this machine's GPU: measured, or projected from a shorter run.

    python benchmarks/paper.py [--train-steps N] [--samples N] [--eager-steps N] [--out FILE]

A `paper` run trains 46,900 steps at batch 128, draws 10,000 samples with the 1000-step ancestral
sampler and scores them (FID, KID, precision/recall). By default this runs exactly that. With
fewer ``--train-steps`` or ``--samples`` it runs that much of it and scales each phase to the full
budget: every training step after the warm-up is the same graph replay, and sampling goes in
batches of 2,500 that each cost the same, so both are linear in their count (the one-off warm-up
and capture are scaled too, which overstates the projection slightly). The scoring time is
projected in the same, cautious, way. ``--eager-steps`` also times that many training steps
without CUDA graphs, to show what the graphs buy. It runs on the CPU too, where no graph is used.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from benchmarks.run import machine, timed
from core.arguments import output_file
from core.config import SCALES, Config
from core.data import as_tensor, mnist
from core.diffusion import DiffusionProcess
from core.evaluation import sample_and_evaluate
from core.train import train

PAPER = Config(**SCALES["paper"])


def time_training(images: torch.Tensor, config: Config, cuda_graphs: bool = True) -> tuple[DiffusionProcess, float]:
    """A process trained for ``config.train_steps`` steps, and the seconds that took (device synced)."""
    process = DiffusionProcess(config)
    process.cuda_graphs = cuda_graphs and process.device.type == "cuda"
    every = 25 * config.log_every

    def log(name: str, value: float, step: int) -> None:
        if name == "train.loss" and step % every == 0:
            print(f"step {step:>6}  loss {value:.4f}", flush=True)
    return process, timed(lambda: train(process, images, log=log), process.device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=PAPER.train_steps)
    parser.add_argument("--samples", type=int, default=PAPER.n_samples)
    parser.add_argument("--eager-steps", type=int, default=0, help="also time this many steps without CUDA graphs")
    parser.add_argument("--compile", action="store_true", help="the `paper` config with compile=True")
    parser.add_argument("--out", type=output_file("--out"), help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    for flag, value, budget in (("--train-steps", args.train_steps, PAPER.train_steps),
                                ("--samples", args.samples, PAPER.n_samples)):
        if not 1 <= value <= budget:
            parser.error(f"invalid {flag}={value}: valid values are 1 to the `paper` budget, {budget}")
    try:
        config = PAPER.replace(compile=args.compile, n_samples=args.samples)
    except ValueError as error:
        parser.error(str(error))
    images = as_tensor(mnist(train=True))
    row = {"command": "python benchmarks/paper.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": machine(), "train_steps": args.train_steps, "samples": args.samples}
    if args.eager_steps:
        _, eager_s = time_training(images, config.replace(train_steps=args.eager_steps), cuda_graphs=False)
        row["eager_step_ms"] = 1e3 * eager_s / args.eager_steps
    process, train_s = time_training(images, config.replace(train_steps=args.train_steps))
    row["step_ms"] = 1e3 * train_s / args.train_steps
    wall_s = {"train": train_s}
    _, metrics = sample_and_evaluate(process, PAPER.seed, wall_s)
    scale = {"train": PAPER.train_steps / args.train_steps, "sample": PAPER.n_samples / args.samples,
             "evaluate": PAPER.n_samples / args.samples}
    row["measured_s"] = wall_s
    row["paper_s"] = {phase: wall_s[phase] * scale[phase] for phase in scale}
    row["paper_total_s"] = sum(row["paper_s"].values())
    row["fid_at_this_budget"] = metrics["fid"]
    projected = "measured" if all(v == 1 for v in scale.values()) else "projected"
    print(json.dumps(row, indent=1))
    print(f"\n`paper` run on {row['machine']['cuda'] or row['machine']['cpu']}: {projected} "
          f"{row['paper_total_s']:.0f} s = train {row['paper_s']['train']:.0f} + sample {row['paper_s']['sample']:.0f}"
          f" + evaluate {row['paper_s']['evaluate']:.0f} (target 180 s on an H100); step {row['step_ms']:.2f} ms"
          + (f", {row['eager_step_ms']:.2f} ms without CUDA graphs" if "eager_step_ms" in row else ""))
    if args.out:
        args.out.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
