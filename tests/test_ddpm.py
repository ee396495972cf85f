import numpy as np
import pytest
import torch

from core import ddpm
from core.schedules import get_betas

T = 1000


@pytest.fixture(params=["cosine", "linear"])
def coeffs(request):
    return ddpm.DDPMCoefficients.from_betas(get_betas(request.param, T))


def _images(seed, n=4):
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_q_sample_equals_closed_form(coeffs):
    x0, noise = _images(0), _images(1)
    t = torch.tensor([0, 10, 500, 999])
    ab = coeffs.alpha_bar[t][:, None, None, None]
    expected = ab.sqrt() * x0 + (1 - ab).sqrt() * noise  # Ho et al. 2020, Eq. 4
    assert torch.allclose(ddpm.q_sample(coeffs, x0, t, noise), expected, atol=1e-5)


def test_q_sample_at_t0_is_almost_clean(coeffs):
    x0, noise = _images(0), _images(1)
    x_t = ddpm.q_sample(coeffs, x0, torch.zeros(4, dtype=torch.long), noise)
    assert (x_t - x0).abs().max() < 0.1


def test_posterior_matches_gaussian_conditioning(coeffs):
    """Eq. 6-7 of Ho et al. 2020 against the product of the two Gaussians, computed in float64."""
    betas = np.asarray(coeffs.betas, dtype=np.float64)
    ab = np.cumprod(1 - betas)
    x0, x_t = _images(2).double(), _images(3).double()
    for t in (1, 37, 500, 998):
        prior_var, lik_var = 1 - ab[t - 1], betas[t]  # q(x_{t-1} | x_0), q(x_t | x_{t-1})
        var = 1 / (1 / prior_var + (1 - betas[t]) / lik_var)
        mean = var * (np.sqrt(ab[t - 1]) * x0 / prior_var + np.sqrt(1 - betas[t]) * x_t / lik_var)
        tt = torch.full((4,), t)
        got_mean, got_var = ddpm.posterior_mean_variance(coeffs, x0.float(), x_t.float(), tt)
        assert got_var[0].item() == pytest.approx(var, rel=1e-5)
        assert torch.allclose(got_mean.double(), mean, atol=1e-5)


def test_unclipped_ancestral_step_is_the_seed_formula(coeffs):
    x_t, eps, z = _images(4), _images(5), _images(6)
    t = torch.tensor([999, 500, 3, 1])
    b, a, ab = (v[t][:, None, None, None] for v in (coeffs.betas, coeffs.alphas, coeffs.alpha_bar))
    sigma = coeffs.posterior_variance[t][:, None, None, None].sqrt()
    seed_mean = (1 / a.sqrt()) * (x_t - (b / (1 - ab).sqrt()) * eps)  # the seed's sample() update
    got = ddpm.ancestral_step(coeffs, x_t, t, eps, z, "posterior", clip_denoised=False)
    assert torch.allclose(got, seed_mean + sigma * z, atol=1e-4)
    # The same mean through x_0-prediction and the posterior (Eq. 7): the two forms agree.
    x0 = ddpm.predict_x0(coeffs, x_t, t, eps)
    post_mean, _ = ddpm.posterior_mean_variance(coeffs, x0, x_t, t)
    assert torch.allclose(post_mean, seed_mean, atol=1e-3)


def test_last_ancestral_step_adds_no_noise(coeffs):
    x_t, eps, z = _images(4), _images(5), _images(6)
    t0 = torch.zeros(4, dtype=torch.long)
    assert torch.equal(ddpm.ancestral_step(coeffs, x_t, t0, eps, z), ddpm.ancestral_step(coeffs, x_t, t0, eps, 0 * z))


def test_beta_variance_option(coeffs):
    t = torch.tensor([5, 500])
    assert torch.equal(ddpm.sampler_variance(coeffs, t, "beta").flatten(), coeffs.betas[t])
    assert torch.equal(ddpm.sampler_variance(coeffs, t, "posterior").flatten(), coeffs.posterior_variance[t])


def test_ddim_with_eta_1_and_stride_1_has_the_ddpm_variance(coeffs):
    """Song et al. 2021, Eq. 16: eta = 1 with every step gives sigma^2 = beta-tilde."""
    x_t, eps = _images(4), _images(5)
    t = 500
    no_noise = ddpm.ddim_step(coeffs, x_t, t, t - 1, eps, None, eta=1.0, clip_denoised=False)
    with_noise = ddpm.ddim_step(coeffs, x_t, t, t - 1, eps, torch.ones_like(x_t), eta=1.0, clip_denoised=False)
    sigma = (with_noise - no_noise).mean().item()
    assert sigma**2 == pytest.approx(coeffs.posterior_variance[t].item(), rel=1e-3)


def test_ddim_eta0_recovers_x0_from_exact_noise(coeffs):
    x0, noise = _images(7).clamp(-1, 1), _images(8)
    t = torch.full((4,), 600)
    x_t = ddpm.q_sample(coeffs, x0, t, noise)
    out = ddpm.ddim_step(coeffs, x_t, 600, -1, noise, None, eta=0.0, clip_denoised=False)
    assert torch.allclose(out, x0, atol=1e-4)


def test_ddim_timesteps():
    assert ddpm.ddim_timesteps(1000, 50)[0] == 999 and ddpm.ddim_timesteps(1000, 50)[-1] == 0
    assert len(ddpm.ddim_timesteps(1000, 50)) == 50
    assert ddpm.ddim_timesteps(10, 10) == list(range(9, -1, -1))
    with pytest.raises(ValueError, match="steps=0"):
        ddpm.ddim_timesteps(1000, 0)
