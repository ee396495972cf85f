"""The held-out metrics: the variational bound against an independent float64 computation of Ho et al.'s
Eq. 5, its stratified estimate, common random numbers across processes, and the log-SNR grid."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import stats

from core import likelihood
from core.config import SCALES, Config
from core.diffusion import DiffusionProcess
from core.schedules import get_betas

T = 20  # a short schedule keeps the exact bound cheap


@pytest.fixture(scope="module")
def tiny():
    """The seed model, untrained, on a 20-step cosine schedule (the posterior variance)."""
    return DiffusionProcess(Config(noise_steps=T, amp=False), device="cpu")


def reference_terms(process, x0: np.ndarray, t: int, noise: np.ndarray) -> np.ndarray:
    """Ho et al. 2020, Eq. 5, written out in numpy float64 from the betas: L_{t-1} (KL of two Gaussians)
    for t >= 1, L_0 (Eq. 13, the discretised decoder) for t = 0; nats per image."""
    betas = np.asarray(get_betas(process.config.schedule, process.config.noise_steps), dtype=np.float64)
    alphas, abar = 1 - betas, np.cumprod(1 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    x_t = np.sqrt(abar[t]) * x0 + np.sqrt(1 - abar[t]) * noise  # Eq. 4
    eps = likelihood.predict_noise(process, torch.from_numpy(x_t), torch.full((len(x0),), t)).numpy()
    mu_model = (x_t - betas[t] / np.sqrt(1 - abar[t]) * eps) / np.sqrt(alphas[t])  # Eq. 11
    beta_tilde = (1 - abar_prev) / (1 - abar) * betas  # Eq. 7
    var_model = beta_tilde[1] if t == 0 else beta_tilde[t]  # the first step's beta-tilde is 0: the second's
    if t == 0:
        edges = np.where(x0 > 0.999, np.inf, x0 + 1 / 255), np.where(x0 < -0.999, -np.inf, x0 - 1 / 255)
        sd_model = np.sqrt(var_model)
        p = stats.norm.cdf(edges[0], mu_model, sd_model) - stats.norm.cdf(edges[1], mu_model, sd_model)
        return -np.log(np.maximum(p, 1e-12)).reshape(len(x0), -1).sum(1)
    mu_true = (np.sqrt(abar_prev[t]) * betas[t] * x0 + np.sqrt(alphas[t]) * (1 - abar_prev[t]) * x_t) / (1 - abar[t])
    var_true = beta_tilde[t]
    kl = 0.5 * (np.log(var_model / var_true) + var_true / var_model + (mu_true - mu_model) ** 2 / var_model - 1)
    return kl.reshape(len(x0), -1).sum(1)


def test_every_term_of_the_exact_bound_matches_an_independent_float64_computation(tiny):
    c = likelihood.coefficients(tiny)
    x0 = likelihood.heldout_digits(3).double()
    g = torch.Generator().manual_seed(0)
    for t in range(T):
        noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        ours = likelihood.bound_terms(tiny, c, x0, torch.full((3,), t), noise).numpy()
        np.testing.assert_allclose(ours, reference_terms(tiny, x0.numpy(), t, noise.numpy()), rtol=1e-6)
    prior = likelihood.prior_term(c, x0).numpy()
    abar_T = np.cumprod(1 - get_betas("cosine", T))[-1]
    reference_prior = 0.5 * ((abar_T * x0.numpy() ** 2) + (1 - abar_T) - 1 - np.log(1 - abar_T)).reshape(3, -1).sum(1)
    np.testing.assert_allclose(prior, reference_prior, rtol=1e-9)


def test_the_exact_bound_is_the_sum_of_its_terms_in_bits_per_dimension(tiny):
    exact = likelihood.nll_bpd(tiny, n_images=3, exact=True)
    c, x0 = likelihood.coefficients(tiny), likelihood.heldout_digits(3).double()
    g = torch.Generator().manual_seed(likelihood.HELDOUT_SEED)
    nats = likelihood.prior_term(c, x0)
    for t in range(T):  # the same draws, in the same order, as nll_bpd's exact mode
        nats += likelihood.bound_terms(tiny, c, x0, torch.full((3,), t), torch.randn(x0.shape, generator=g,
                                                                                      dtype=torch.float64))
    np.testing.assert_allclose(exact["per_image_bpd"], (nats / (784 * np.log(2))).numpy(), rtol=1e-12)
    assert exact["nll_bpd"] > 8  # an untrained network is worse than a uniform model of the 256 pixel values


def test_the_stratified_estimate_agrees_with_the_exact_bound_within_its_standard_error(tiny):
    exact = likelihood.nll_bpd(tiny, n_images=32, exact=True)
    estimate = likelihood.nll_bpd(tiny, n_images=32, strata=4)
    assert abs(estimate["nll_bpd"] - exact["nll_bpd"]) < 3 * estimate["nll_bpd_se"]
    assert estimate["nll_bpd_se"] > 0


CRN = """
import torch
from core import likelihood
from core.config import SCALES, Config
from core.diffusion import DiffusionProcess
torch.manual_seed(12345)  # other draws before the metrics must not change them
p = DiffusionProcess(Config(noise_steps=50, amp=False, seed=3), device="cpu")
print(likelihood.nll_bpd(p, n_images=6, strata=5)["per_image_bpd"],
      likelihood.denoising_error(p, n_images=6)["eps_mse"])
"""


def test_the_stratified_estimate_is_bitwise_identical_across_processes():
    outputs = [subprocess.run([sys.executable, "-c", CRN], capture_output=True, text=True, check=True).stdout
               for _ in range(2)]
    assert outputs[0] == outputs[1] and outputs[0].startswith("[")


def test_each_log_snr_level_maps_to_each_schedules_own_timestep():
    timesteps = {}
    for schedule in ("cosine", "linear"):
        process = DiffusionProcess(Config(schedule=schedule, amp=False), device="cpu")
        c = likelihood.coefficients(process)
        timesteps[schedule] = likelihood.level_timesteps(c)
        log_snr = (c.alpha_bar / (1 - c.alpha_bar)).log()[timesteps[schedule]].numpy()
        np.testing.assert_allclose(log_snr, likelihood.LOG_SNR_LEVELS, atol=0.05)  # the same noise levels
        assert timesteps[schedule] == sorted(timesteps[schedule], reverse=True)  # noisier first
    assert timesteps["cosine"] != timesteps["linear"]


def test_denoising_error_is_per_level_and_uses_common_random_numbers(tiny):
    first, again = likelihood.denoising_error(tiny, n_images=4), likelihood.denoising_error(tiny, n_images=4)
    assert first == again and len(first["eps_mse"]) == len(likelihood.LOG_SNR_LEVELS)
    assert first["eps_mse_mean"] == pytest.approx(np.mean(first["eps_mse"])) and min(first["x0_mse"]) >= 0


def test_held_out_sizes_cost_at_most_a_fifth_of_sampling_and_shrink_only_at_smoke():
    calls = lambda sizes: sum(sizes[k] * likelihood.CALLS_PER_IMAGE[k] for k in sizes)  # noqa: E731
    for scale, expected in (("smoke", {"nll_bpd": 6, "eps_mse": 4}), ("small", likelihood.HELDOUT_IMAGES),
                            ("gpu", likelihood.HELDOUT_IMAGES), ("paper", likelihood.HELDOUT_IMAGES)):
        config = Config(**SCALES[scale])
        sizes = likelihood.heldout_sizes(config, config.n_samples)
        steps = config.noise_steps if config.sampler == "ancestral" else config.sampler_steps
        assert sizes == expected and calls(sizes) <= config.n_samples * steps / 5 + 13, scale  # + one image's rounding
    assert likelihood.heldout_sizes(Config(**SCALES["smoke"]), 4) == {"nll_bpd": 4, "eps_mse": 4}  # never below 4
