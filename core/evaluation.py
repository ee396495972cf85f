"""Sampling, then scoring: a trained process's evaluation, and the calibration of the metrics.

    python -m core.evaluation calibrate [--ns 1000,5000,10000] [--checkpoint PATH] [--out FILE.json]

:func:`sample_and_evaluate` is the one evaluation phase that runs, re-executions, re-sampling
and the benchmarks share; :func:`calibrate` says what "good" is at a given number of samples.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from core.arguments import output_file
from core.checkpoint import load_checkpoint
from core.classifier import file_sha256
from core.diffusion import DiffusionProcess
from core.fidelity import class_share_range, compare, evaluate, reference_images, to_uint8


def sample_and_evaluate(process, seed: int, wall_s: dict | None = None,
                        clip_denoised: bool | None = None) -> tuple[torch.Tensor, dict]:
    """Draw a trained process's evaluation samples (its config's sampler, steps, eta and N) and score them.

    :param process: a :class:`core.diffusion.DiffusionProcess`.
    :param seed: seeds the sampler's noise.
    :param wall_s: when given, receives the seconds spent in the "sample" and "evaluate" phases.
    :param clip_denoised: the sampler's x_0 clipping; None is its default (what runs use).
    :return: (samples (N, 1, 28, 28) in [-1, 1], the metrics of :func:`evaluate` against the test split).
    """
    config, wall_s = process.config, {} if wall_s is None else wall_s
    started = time.perf_counter()
    samples = process.sample_as_configured(config.n_samples, seed, clip_denoised)
    wall_s["sample"] = time.perf_counter() - started
    started = time.perf_counter()
    metrics = evaluate(samples, reference="test")
    wall_s["evaluate"] = time.perf_counter() - started
    return samples, metrics


def noisy(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """uint8 images with Gaussian noise of std ``sigma`` added on the [-1, 1] scale, as float samples."""
    x = images.float().div(255).sub(0.5).div(0.5)
    return (x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))).clamp(-1, 1)


def calibrate(ns: list[int], process: DiffusionProcess | None = None, n_model: int = 500, log=print) -> list[dict]:
    """What "good" is at a given N, and how far the fast sampler moves the metric.

    Rows: real train subset vs real test subset at each N; test + Gaussian noise (sigma 0.1, 0.3)
    vs test at the largest N; and, given a trained process, DDIM-50 vs ancestral-1000 samples of it. Each row
    also holds the classifier score and the smallest and largest class share of the images it scores: what
    real digits score on the "draws digits" rule at that N.
    """
    rows = []

    def add(name: str, n: int, metrics: dict) -> None:
        low, high = class_share_range(metrics["class_histogram"])
        rows.append({"comparison": name, "n": n, "min_class_share": low, "max_class_share": high}
                    | {k: v for k, v in metrics.items() if k != "class_histogram"})
        log(f"{name:<44} N={n:>6}  FID {metrics['fid']:9.2f}  KID {metrics['kid_mean']:.4f}  "
            f"precision {metrics['precision']:.3f}  recall {metrics['recall']:.3f}  "
            f"classifier score {metrics['classifier_score']:.2f}  classes {low:.1%}-{high:.1%}")

    for n in ns:
        add("real train vs real test", n, compare(reference_images("train", n), reference_images("test", n)))
    n = max(ns)
    for sigma in (0.1, 0.3):
        add(f"test + N(0, {sigma}^2) noise vs test", n, evaluate(noisy(reference_images("test", n), sigma), "test", n))
    if process is not None:
        fast = process.sample(n_model, sampler="ddim", steps=50, seed=0)
        slow = process.sample(n_model, sampler="ancestral", seed=0, progress=True)
        add("DDIM-50 vs test", n_model, evaluate(fast, "test", n_model))
        add("ancestral-1000 vs test", n_model, evaluate(slow, "test", n_model))
        add("DDIM-50 vs ancestral-1000 (same model)", n_model, compare(to_uint8(fast), to_uint8(slow)))
    return rows


def sample_counts(text: str) -> list[int]:
    """``--ns``: N real digits a side, each from 4 (the k-NN of precision/recall) to the test set's 10,000."""
    try:
        ns = [int(n) for n in text.split(",")]
        if all(4 <= n <= 10_000 for n in ns):
            return ns
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"invalid --ns {text!r}: valid values are comma-separated integers from 4 to "
                                     "10000, e.g. 1000,5000")


def sample_count(text: str) -> int:
    """``--n-model``: samples each sampler draws, scored against as many test digits (4 to 10,000, as ``--ns``)."""
    if text.isdigit() and 4 <= int(text) <= 10_000:
        return int(text)
    raise argparse.ArgumentTypeError(f"invalid --n-model {text!r}: valid values are integers from 4 to 10000 (each "
                                     "sampler's samples are scored against as many test digits)")


def loaded_checkpoint(parser: argparse.ArgumentParser, args: argparse.Namespace) -> DiffusionProcess | None:
    """The ``--checkpoint``'s process (None without one). One that does not load is a usage error before any work
    (it failed once the real digits had been scored)."""
    process = None
    if args.checkpoint is not None:
        try:
            process = load_checkpoint(args.checkpoint)
        except Exception as exc:  # missing, not a torch file, or not a full checkpoint: each is the finding
            parser.error(f"invalid --checkpoint {str(args.checkpoint)!r} ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0]}): valid values are a run's full checkpoint, "
                         "runs/journal/ablations/db-*/RUN/checkpoint.pt")
    return process


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.evaluation", description="Calibrate the classifier-feature "
                                     "metrics.")
    parser.add_argument("command", choices=["calibrate"])
    parser.add_argument("--ns", type=sample_counts, default=[1000, 5000, 10_000],
                        help="comma-separated N for real vs real")
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint, to compare DDIM-50 with ancestral-1000")
    parser.add_argument("--n-model", type=sample_count, default=500, help="samples per sampler from the checkpoint")
    parser.add_argument("--out", type=output_file("--out"), help="also write the rows to this JSON file, with the "
                        "command")
    args = parser.parse_args(argv)
    process = loaded_checkpoint(parser, args)
    rows = calibrate(args.ns, process, args.n_model)
    if args.out:
        record = {"command": "python -m core.evaluation " + " ".join(sys.argv[1:] if argv is None else argv),
                  "rows": rows}
        if process is not None:  # which model the sampler rows scored: its file's hash, step and training config
            record["checkpoint"] = {"sha256": file_sha256(args.checkpoint), "step": process.step,
                                    "config": process.config.to_dict()}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
