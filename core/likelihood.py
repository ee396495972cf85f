"""Held-out metrics that rank models where FID cannot: the variational bound and the denoising error.

At small training budgets every model draws scribbles and FID cannot tell most design choices
apart. The training loss could, but it cannot see EMA, it includes dropout's noise, and each
schedule weighs the noise levels its own way. These metrics are evaluated the same way for every
run: in eval mode, in fp32, on the weights the run samples from, on a fixed set of held-out test
digits with common random numbers (the same images, timesteps and noise for every run, config and
seed), so that most of the estimator's noise cancels in paired differences between runs.

- :func:`nll_bpd`: the DDPM variational bound on -log p(x_0) in bits per dimension (Ho et al.
  2020, Eq. 5): L_T + sum over t of L_{t-1} + L_0, with the discretised Gaussian decoder of
  Sec. 3.3 for L_0. The sum over t is estimated from stratified timesteps, or summed over all T
  (``exact=True``: T network evaluations per image).
- :func:`denoising_error`: eps-MSE, and the MSE of the clipped x_0 prediction, at a fixed grid of
  log-SNR levels, each mapped to the schedule's own nearest timestep, so that a cosine and a linear
  run are compared at the same noise level.

    python -m core.likelihood [runs/journal/ablations/7/final_weights.pt] [--images 128] [--exact]
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from core import ddpm
from core.checkpoint import load_weights, restore_weights
from core.config import Config
from core.diffusion import DiffusionProcess
from core.ddpm import DDPMCoefficients, _gather
from core.fidelity import reference_images
from core.schedules import get_betas

HELDOUT_SEED = 20_261_126  # seeds the timesteps and noise: common random numbers for every run
# The terms of the bound fall by three orders of magnitude from the first steps to the middle ones, and
# the last step's is large again: the cosine schedule clips beta_{T-1} to 0.999, so mu_theta divides the
# noise prediction's error by sqrt(alpha_{T-1}) = 0.03. Those five are summed exactly; the others are
# estimated from log-spaced strata, one timestep drawn in each per image.
EXACT_STEPS = (0, 1, 2, 3, -1)  # -1: the last step, T - 1
STRATA = 8
LOG_SNR_LEVELS = tuple(float(x) for x in np.linspace(-6.0, 6.0, 12))  # log(alpha_bar / (1 - alpha_bar))
BATCH = 256  # images per network call


def heldout_digits(n: int) -> torch.Tensor:
    """n test digits in [-1, 1], (n, 1, 28, 28): the first n of the fixed permutation that FID uses."""
    return reference_images("test", n).float() / 127.5 - 1.0  # uint8 -> [-1, 1], as the training data


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_nll(x0: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """-log p(x_0) under N(mean, exp(log_var)) integrated over x_0's bin, elementwise (Ho et al. 2020, Eq. 13).

    The 256 pixel values are bins of width 2/255 on [-1, 1]; the outermost bins reach to -inf and +inf.
    """
    inv_std = torch.exp(-0.5 * log_var)
    upper, lower = (x0 - mean + 1 / 255) * inv_std, (x0 - mean - 1 / 255) * inv_std
    log_mid = torch.log((torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12))
    log_prob = torch.where(x0 < -0.999, torch.special.log_ndtr(upper),
                           torch.where(x0 > 0.999, torch.special.log_ndtr(-lower), log_mid))
    return -log_prob


def model_log_variance(c: DDPMCoefficients, t: torch.Tensor, variance: str) -> torch.Tensor:
    """log sigma_t^2 of p(x_{t-1} | x_t), (B, 1, 1, 1): beta-tilde_t or beta_t (Ho et al. 2020, Sec. 3.2).

    beta-tilde of the first step is 0 (alpha_bar_0 = 1); the decoder, as in improved-diffusion, takes
    the second step's beta-tilde there, for both choices.
    """
    table = c.posterior_variance if variance == "posterior" else c.betas
    return _gather(torch.cat([c.posterior_variance[1:2], table[1:]]).log(), t)


@torch.inference_mode()
def predict_noise(process, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """eps(x_t, t) of the weights the process samples from, in eval mode and fp32, in batches."""
    model = process.sampling_model
    was_training = model.training
    model.eval()
    device = process.device
    out = torch.cat([model(process._layout(x.float().to(device)), s.to(device)).float().cpu()
                     for x, s in zip(x_t.split(BATCH), t.split(BATCH))])
    model.train(was_training)
    return out.to(x_t.dtype)


def coefficients(process) -> DDPMCoefficients:
    """The process's schedule in float64 on the CPU, where the bound's terms are computed."""
    return DDPMCoefficients.from_betas(get_betas(process.config.schedule, process.config.noise_steps),
                                       dtype=torch.float64)


def bound_terms(process, c: DDPMCoefficients, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """(B,) nats: L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0, and L_0 = -log p(x_0 | x_1)
    with the discretised decoder for t = 0 (Ho et al. 2020, Eq. 5; 0-based t holds the paper's t + 1)."""
    x_t = ddpm.q_sample(c, x0, t, noise)
    eps = predict_noise(process, x_t, t)
    model_mean, _ = ddpm.posterior_mean_variance(c, ddpm.predict_x0(c, x_t, t, eps), x_t, t)  # = Eq. 11
    log_var = model_log_variance(c, t, process.config.variance)
    true_mean, true_var = ddpm.posterior_mean_variance(c, x0, x_t, t)
    kl = normal_kl(true_mean, true_var.clamp(min=1e-30).log(), model_mean, log_var).flatten(1).sum(1)
    decoder = discretized_gaussian_nll(x0, model_mean, log_var).flatten(1).sum(1)
    return torch.where(t == 0, decoder, kl)


def prior_term(c: DDPMCoefficients, x0: torch.Tensor) -> torch.Tensor:
    """(B,) nats: L_T = KL(q(x_T | x_0) || N(0, I)), which no parameter changes."""
    last = torch.full((x0.shape[0],), c.num_steps - 1, dtype=torch.long)
    mean = _gather(c.sqrt_alpha_bar, last) * x0
    log_var = _gather(1.0 - c.alpha_bar, last).log().expand_as(x0)
    return normal_kl(mean, log_var, torch.zeros_like(x0), torch.zeros_like(x0)).flatten(1).sum(1)


def nll_bpd(process, n_images: int = 256, strata: int = STRATA, exact: bool = False) -> dict:
    """The variational bound on held-out test digits, in bits per dimension, with its standard error.

    :param n_images: held-out test digits (the first of the fixed permutation).
    :param strata: the timesteps between the exact ones (:data:`EXACT_STEPS`) fall into this many
        log-spaced strata; each image draws one timestep from each, and its term counts as many
        times as the stratum has timesteps.
    :param exact: sum every one of the T terms instead (T network evaluations per image).
    :return: ``nll_bpd`` (mean over images), ``nll_bpd_se`` (standard error over images), and
        ``per_image_bpd``.
    """
    c = coefficients(process)
    x0 = heldout_digits(n_images).double()  # (N, C, H, W)
    g = torch.Generator().manual_seed(HELDOUT_SEED)
    n, always, edges = len(x0), exact_steps(c.num_steps), stratum_edges(c.num_steps, strata)
    total = prior_term(c, x0)
    for step in range(c.num_steps) if exact else always:
        noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        total += bound_terms(process, c, x0, torch.full((n,), step, dtype=torch.long), noise)
    for low, high in [] if exact else zip(edges[:-1], edges[1:]):
        t = torch.randint(int(low), int(high), (n,), generator=g)
        noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        total += (high - low) * bound_terms(process, c, x0, t, noise)
    bpd = total / (x0[0].numel() * math.log(2))  # nats per image -> bits per dimension
    return {"nll_bpd": bpd.mean().item(), "nll_bpd_se": (bpd.std() / math.sqrt(n)).item() if n > 1 else float("nan"),
            "per_image_bpd": bpd.tolist()}


def exact_steps(num_steps: int) -> list[int]:
    """The timesteps whose terms the stratified estimate sums exactly (:data:`EXACT_STEPS`)."""
    return sorted({s % num_steps for s in EXACT_STEPS if -num_steps <= s < num_steps})


def stratum_edges(num_steps: int, strata: int) -> np.ndarray:
    """Log-spaced edges of the strata between the first exact steps and the last step: [4, T - 1)."""
    low, high = max(EXACT_STEPS) + 1, num_steps - 1
    if high <= low:
        return np.array([], dtype=int)
    return np.unique(np.geomspace(low, high, strata + 1).round().astype(int))


def level_timesteps(c: DDPMCoefficients, levels: tuple[float, ...] = LOG_SNR_LEVELS) -> list[int]:
    """The schedule's timestep whose log-SNR, log(alpha_bar / (1 - alpha_bar)), is nearest each level."""
    log_snr = (c.alpha_bar / (1.0 - c.alpha_bar)).log()
    return [int((log_snr - level).abs().argmin()) for level in levels]


def denoising_error(process, n_images: int = 128, levels: tuple[float, ...] = LOG_SNR_LEVELS) -> dict:
    """eps-MSE and clipped-x_0 MSE on held-out digits at each log-SNR level, and their means over levels.

    :return: ``log_snr`` (the levels), ``timesteps`` (this schedule's), ``eps_mse`` and ``x0_mse`` (one
        per level), ``eps_mse_mean`` and ``x0_mse_mean``.
    """
    c = coefficients(process)
    x0 = heldout_digits(n_images).double()
    g = torch.Generator().manual_seed(HELDOUT_SEED + 1)
    out = {"log_snr": list(levels), "timesteps": level_timesteps(c, levels), "eps_mse": [], "x0_mse": []}
    for step in out["timesteps"]:
        t = torch.full((len(x0),), step, dtype=torch.long)
        noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        x_t = ddpm.q_sample(c, x0, t, noise)
        eps = predict_noise(process, x_t, t)
        out["eps_mse"].append((eps - noise).square().mean().item())
        out["x0_mse"].append((ddpm.predict_x0(c, x_t, t, eps).clamp(-1, 1) - x0).square().mean().item())
    out["eps_mse_mean"], out["x0_mse_mean"] = float(np.mean(out["eps_mse"])), float(np.mean(out["x0_mse"]))
    return out


HELDOUT_IMAGES = {"nll_bpd": 96, "eps_mse": 64}  # at every scale whose sampling is costlier than smoke's
CALLS_PER_IMAGE = {"nll_bpd": len(EXACT_STEPS) + STRATA, "eps_mse": len(LOG_SNR_LEVELS)}  # 13 and 12


def heldout_sizes(config, n_samples: int) -> dict[str, int]:
    """Held-out digits for each metric: 96 for the bound and 64 for the denoising error, or fewer (at
    least 4) where those would cost more network calls than a fifth of drawing ``n_samples`` samples
    with ``config``'s sampler. Only the `smoke` scale (64 samples, DDIM-10) is that cheap: 6 and 4."""
    steps = config.noise_steps if config.sampler == "ancestral" else config.sampler_steps
    full_calls = sum(HELDOUT_IMAGES[k] * CALLS_PER_IMAGE[k] for k in HELDOUT_IMAGES)  # 2,016
    share = min(1.0, n_samples * steps / 5 / full_calls)
    return {k: max(4, min(n_samples, round(n * share))) for k, n in HELDOUT_IMAGES.items()}


def heldout_metrics(process, n_samples: int) -> dict:
    """Both held-out metrics of a trained process, on :func:`heldout_sizes` digits: the same for every
    run of a sweep, since no toggle changes the number of samples or the sampler.

    :return: ``nll_bpd``, ``nll_bpd_se``, ``eps_mse`` (mean over levels), ``x0_mse``, ``levels`` (the
        per-level values with their log-SNR and this schedule's timesteps), and ``images`` (the sizes).
    """
    sizes = heldout_sizes(process.config, n_samples)
    bound = nll_bpd(process, n_images=sizes["nll_bpd"])
    errors = denoising_error(process, n_images=sizes["eps_mse"])
    return {"nll_bpd": bound["nll_bpd"], "nll_bpd_se": bound["nll_bpd_se"], "eps_mse": errors["eps_mse_mean"],
            "x0_mse": errors["x0_mse_mean"], "levels": {k: errors[k] for k in ("log_snr", "timesteps", "eps_mse",
                                                                                "x0_mse")},
            "images": sizes, "seed": HELDOUT_SEED}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The held-out bound (bits/dim) and denoising error of a model.")
    parser.add_argument("weights", nargs="?", help="a final_weights.pt (a run's artifact); none: an untrained network")
    parser.add_argument("--images", type=int, default=128, help="held-out test digits (default 128)")
    parser.add_argument("--exact", action="store_true", help="sum all T terms instead of the stratified estimate")
    args = parser.parse_args(argv)
    if not 2 <= args.images <= 10_000:
        parser.error(f"invalid --images={args.images}: valid values are 2 to 10000")
    weights = load_weights(args.weights) if args.weights else None
    process = DiffusionProcess(Config.from_mapping(weights["config"]) if weights else Config(), device="cpu")
    if weights:
        restore_weights(process, weights)
    started = time.perf_counter()
    bound = nll_bpd(process, n_images=args.images, exact=args.exact)
    print(f"{'exact' if args.exact else f'stratified ({STRATA} strata)'} bound on {args.images} held-out digits: "
          f"{bound['nll_bpd']:.4f} ± {bound['nll_bpd_se']:.4f} bits/dim (SE) in {time.perf_counter() - started:.0f} s")
    errors = denoising_error(process, n_images=min(96, args.images))
    print(f"eps-MSE over {len(LOG_SNR_LEVELS)} log-SNR levels: {errors['eps_mse_mean']:.4f}; per level: "
          + ", ".join(f"{level:+.1f}: {e:.3f}" for level, e in zip(errors["log_snr"], errors["eps_mse"])))


if __name__ == "__main__":
    main()
