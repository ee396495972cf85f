"""One model's FID under several samplers: does a score come from the model or from the sampler?

    python benchmarks/samplers.py RUN_DIR/final_weights.pt [--variants as-run,clip,beta,fp32,ddim100,ancestral]
                                  [--n 5000] [--grids grids.png] [--out samplers.json]

Every variant samples the same final weights, from the run's own sampler seed and with the same
number of samples, and is scored against the test split like a run (:func:`sample_and_evaluate`):

- ``as-run``: the run's own sampler (for `paper`: ancestral, 1000 steps, sigma_t^2 = beta-tilde_t,
  x_0 unclipped, in the run's AMP precision).
- ``clip``: the same, with the predicted x_0 clipped to [-1, 1] inside each step (improved-diffusion's
  default).
- ``beta``: sigma_t^2 = beta_t instead of beta-tilde_t (Ho et al. 2020, Sec. 3.2: both are the paper's).
- ``fp32``: the network evaluated in fp32 instead of under autocast.
- ``ddim100``: DDIM with 100 steps, eta 0, x_0 clipped (Song et al. 2021); ``ddimN`` takes N steps,
  and ``ddimN-etaE`` draws fresh noise at each step with DDIM's eta = E (1: the ancestral sampler on
  N of the noise steps, at the cost of DDIM-N).
- ``ancestral``: the seed's sampler (ancestral, ``noise_steps`` steps) for a run that sampled with DDIM,
  as the `gpu` scale does; not in the default list, where ``as-run`` is mostly that already.

The weights may also be a process checkpoint (``benchmarks/budget.py --checkpoint``): it holds the
same config, model and EMA weights. A run that kept an EMA samples its EMA weights; ``--trained`` samples
its trained weights instead, with the same noise (a probe's ``--ema both`` scores both).

Only ``as-run`` at the run's own N can equal the run's stored FID; FID falls with N, so compare
the variants with each other at one N.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from benchmarks.run import machine
from core.arguments import output_file
from core.checkpoint import load_weights, restore_weights
from core.config import Config
from core.diffusion import DiffusionProcess
from core.evaluation import sample_and_evaluate

# name -> (config changes, DiffusionProcess precision, the sampler's clip_denoised (None: its default))
Variant = tuple[dict, str | None, bool | None]
VARIANTS: dict[str, Variant] = {
    "as-run": ({}, None, None),
    "clip": ({}, None, True),
    "beta": ({"variance": "beta"}, None, None),
    "fp32": ({}, "fp32", None),
    "ddim100": ({"sampler": "ddim", "sampler_steps": 100, "sampler_eta": 0.0}, None, None),
    "ancestral": ({"sampler": "ancestral", "sampler_eta": 0.0}, None, None),
}
DEFAULT_VARIANTS = ["as-run", "clip", "beta", "fp32", "ddim100"]
DDIM = re.compile(r"ddim([1-9][0-9]*)(?:-eta(0|1|0?\.[0-9]+))?")  # ddimN[-etaE]: N steps, stochasticity E in [0, 1]


def variant(name: str) -> Variant | None:
    """Variant ``name``'s (config changes, precision, clip_denoised), or None where no variant has that name."""
    if ddim := DDIM.fullmatch(name):
        return {"sampler": "ddim", "sampler_steps": int(ddim[1]), "sampler_eta": float(ddim[2] or 0)}, None, None
    return VARIANTS.get(name)


def variant_process(weights: dict, name: str, n: int, precision: str = "auto") -> tuple[DiffusionProcess, bool | None]:
    """A process holding ``weights`` that samples as variant ``name`` does; and its sampler's clip_denoised."""
    changes, variant_precision, clip_denoised = variant(name)
    config = Config.from_mapping(weights["config"]).replace(n_samples=n, **changes)
    if config.sampler == "ancestral":  # it takes every noise step, whatever DDIM step count the run had
        config = config.replace(sampler_steps=config.noise_steps)
    process = DiffusionProcess(config, precision=variant_precision or precision)
    restore_weights(process, weights)
    return process, clip_denoised


def score(weights: dict, names: list[str], n: int, precision: str = "auto", log=print,
          on_row=None) -> tuple[list[dict], list]:
    """Each variant's metrics and wall seconds, and its first 64 samples.

    :param on_row: when given, called with the rows and first samples so far after each variant (a call cut
        short keeps them).
    """
    seed = weights["config"]["seed"]
    rows, firsts = [], []
    for name in names:
        process, clip_denoised = variant_process(weights, name, n, precision)
        wall_s = {}
        samples, metrics = sample_and_evaluate(process, seed, wall_s, clip_denoised)
        rows.append({"variant": name, "n": n, "weights": "ema" if process.ema_model is not None else "trained",
                     "sampler": process.config.sampler, "variance": process.config.variance,
                     "amp_precision": process.precision, "clip_denoised": clip_denoised,
                     "eta": process.config.sampler_eta} | metrics | {"wall_s": wall_s})
        firsts.append(samples[:64].cpu())
        if on_row:
            on_row(rows, firsts)
        log(f"{name:<8} FID {metrics['fid']:8.2f}  classifier score {metrics['classifier_score']:5.2f}  "
            f"recall {metrics['recall']:.3f}  sample {wall_s['sample']:6.1f} s")
    return rows, firsts


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path, help="a run's final_weights.pt, or a process checkpoint")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, from {', '.join(VARIANTS)}, or ddimN[-etaE] "
                             "(default: all but ancestral)")
    parser.add_argument("--n", type=int, help="samples per variant (default: the run's own n_samples)")
    parser.add_argument("--precision", default="auto", help="the run's AMP precision, when not this device's auto")
    parser.add_argument("--trained", action="store_true",
                        help="sample the trained weights of a run that kept an EMA, not the EMA's")
    parser.add_argument("--grids", type=output_file("--grids"),
                        help="write the variants' first 64 samples, side by side, here")
    parser.add_argument("--out", type=output_file("--out"), help="write the rows as JSON here")
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    if unknown := [v for v in names if variant(v) is None]:
        parser.error(f"invalid --variants {','.join(unknown)}: valid values are {', '.join(VARIANTS)}, or "
                     "ddimN[-etaE] (N DDIM steps, eta E from 0 to 1)")
    try:
        weights = load_weights(args.weights)
    except Exception as exc:  # missing, not a torch file, or neither format: each is the finding, before any work
        parser.error(f"invalid weights {args.weights} ({type(exc).__name__}: {str(exc).splitlines()[0]}): valid "
                     "values are a run's final_weights.pt or a process checkpoint")
    noise_steps = weights["config"]["noise_steps"]
    if too_many := [v for v in names if variant(v)[0].get("sampler_steps", 0) > noise_steps]:
        parser.error(f"invalid --variants {','.join(too_many)}: valid DDIM steps are 1 to {noise_steps}, "
                     "the run's noise_steps")
    if args.trained:
        if weights["ema"] is None:
            parser.error(f"invalid --trained: {args.weights} kept no EMA, so every variant samples its trained "
                         "weights already")
        # a process without an EMA model samples its trained weights, with the noise the EMA's samples drew
        weights = weights | {"config": weights["config"] | {"ema": False}}
    try:  # a bad --n or --precision, before any sampling: the first variant's process checks both
        variant_process(weights, names[0], args.n or weights["config"]["n_samples"], args.precision)
    except ValueError as exc:
        parser.error(str(exc))
    started = time.perf_counter()

    def save(rows: list[dict], firsts: list) -> None:  # after every variant: one that fails loses no other
        if args.out:
            args.out.write_text(json.dumps({"weights": str(args.weights), "step": weights["step"],
                                            "machine": machine(), "wall_s": time.perf_counter() - started,
                                            "rows": rows}, indent=1))
        if args.grids:  # one 8 x 8 grid a variant, left to right in --variants order
            save_image(torch.cat([make_grid(f, nrow=8, normalize=True, value_range=(-1, 1)) for f in firsts], dim=2),
                       args.grids)

    return score(weights, names, args.n or weights["config"]["n_samples"], args.precision, on_row=save)[0]


if __name__ == "__main__":
    main()
