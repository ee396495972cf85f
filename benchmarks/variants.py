"""Per-step GPU times of `paper`-run variants, and the `paper` run each one projects to.

    python benchmarks/variants.py [--variants default,nchw,fp32,compile] [--steps 300] [--out FILE]

For each variant of the `paper` config it times, with CUDA graphs on (the compiled variants too:
the graph captures inductor's kernels), the mean of ``--steps`` training steps after
warm-up and capture, and one network evaluation at the sampler's batch of 2,500 (a DDIM-100 call,
whose steps cost what an ancestral step costs). The projection is 46,900 training steps plus
1000 evaluations for each of the 4 batches of 10,000 samples; scoring (about 7 s) is left out.
``benchmarks/paper.py`` measures one variant end to end; this one is for choosing among them.
"""
from __future__ import annotations

import argparse
import json

import torch

from benchmarks.paper import PAPER
from benchmarks.run import machine, timed
from core.arguments import output_file
from core.data import as_tensor, iterate_batches, mnist
from core.diffusion import GRAPH_WARMUP_STEPS, DiffusionProcess

VARIANTS = {"default": {}, "nchw": {"channels_last": False}, "fp32": {"amp": False},
            "compile": {"compile": True}, "compile-nchw": {"compile": True, "channels_last": False}}
SAMPLE_BATCH, SAMPLE_EVALS = 2500, 100


def time_variant(fields: dict, images: torch.Tensor, steps: int) -> dict:
    process = DiffusionProcess(PAPER.replace(**fields))
    process.cuda_graphs = True
    batches = iterate_batches(images, PAPER.batch_size, PAPER.seed)
    for _ in range(GRAPH_WARMUP_STEPS + 2):  # eager warm-up (and compilation), capture, one replay
        process.train_step(next(batches))
    train_s = timed(lambda: [process.train_step_async(next(batches)) for _ in range(steps)], process.device)
    process.sample(SAMPLE_BATCH, sampler="ddim", steps=5)  # compiles the eval-mode network, if compiling
    sample_s = timed(lambda: process.sample(SAMPLE_BATCH, sampler="ddim", steps=SAMPLE_EVALS, seed=0), process.device)
    row = {"train_step_ms": 1e3 * train_s / steps, "eval_ms_at_2500": 1e3 * sample_s / SAMPLE_EVALS}
    row["paper_train_s"] = row["train_step_ms"] * PAPER.train_steps / 1e3
    row["paper_sample_s"] = row["eval_ms_at_2500"] * PAPER.noise_steps * PAPER.n_samples / SAMPLE_BATCH / 1e3
    row["paper_s_without_scoring"] = row["paper_train_s"] + row["paper_sample_s"]
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=output_file("--out"))
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not torch.cuda.is_available():
        parser.error(f"invalid --variants {','.join(unknown)}: valid values are {', '.join(VARIANTS)}" if unknown
                     else "no CUDA device: this benchmark times CUDA graphs")
    images = as_tensor(mnist(train=True)).cuda()
    rows = {"machine": machine()}
    for name in names:
        try:
            rows[name] = VARIANTS[name] | time_variant(VARIANTS[name], images, args.steps)
        except Exception as error:  # a variant that cannot be captured is reported, not fatal
            rows[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
        print(name, json.dumps(rows[name]), flush=True)
        if args.out:
            args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
