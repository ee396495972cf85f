"""The DDPM math, apart from the network and the trainer.

Notation of Ho et al. 2020: alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t} alpha_s.
Timesteps are 0-based here: index t in [0, T) holds the paper's step t + 1.
Every function works on batches; ``t`` is a (B,) long tensor.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.config import Variance


def _gather(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """values[t] shaped (B, 1, 1, 1) to broadcast over images."""
    return values.gather(0, t)[:, None, None, None]


@dataclass
class DDPMCoefficients:
    """Every per-step quantity the forward process, the loss and the samplers need.

    Computed once in float64 from the betas and stored on ``device`` as float32 (or ``dtype``: the
    variational bound keeps float64).
    """

    betas: torch.Tensor
    alphas: torch.Tensor
    alpha_bar: torch.Tensor
    alpha_bar_prev: torch.Tensor
    sqrt_alpha_bar: torch.Tensor
    sqrt_one_minus_alpha_bar: torch.Tensor
    sqrt_recip_alphas: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_mean_coef_x0: torch.Tensor
    posterior_mean_coef_xt: torch.Tensor

    @classmethod
    def from_betas(cls, betas: np.ndarray, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> "DDPMCoefficients":
        betas = np.asarray(betas, dtype=np.float64)
        alphas = 1.0 - betas
        alpha_bar = np.cumprod(alphas)
        alpha_bar_prev = np.append(1.0, alpha_bar[:-1])
        values = dict(
            betas=betas,
            alphas=alphas,
            alpha_bar=alpha_bar,
            alpha_bar_prev=alpha_bar_prev,
            sqrt_alpha_bar=np.sqrt(alpha_bar),
            sqrt_one_minus_alpha_bar=np.sqrt(1.0 - alpha_bar),
            sqrt_recip_alphas=np.sqrt(1.0 / alphas),
            # Ho et al. 2020, Eq. 7: beta-tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t
            posterior_variance=betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar),
            # Ho et al. 2020, Eq. 7: mu-tilde_t = c_x0 * x_0 + c_xt * x_t
            posterior_mean_coef_x0=np.sqrt(alpha_bar_prev) * betas / (1.0 - alpha_bar),
            posterior_mean_coef_xt=np.sqrt(alphas) * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar),
        )
        return cls(**{k: torch.tensor(v, dtype=dtype, device=device) for k, v in values.items()})

    @property
    def num_steps(self) -> int:
        return self.betas.shape[0]


def q_sample(c: DDPMCoefficients, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) (Ho et al. 2020, Eq. 4): sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
    return _gather(c.sqrt_alpha_bar, t) * x0 + _gather(c.sqrt_one_minus_alpha_bar, t) * noise


def predict_x0(c: DDPMCoefficients, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Invert Eq. 4 of Ho et al. 2020 for x_0 given the predicted noise."""
    return (x_t - _gather(c.sqrt_one_minus_alpha_bar, t) * eps) / _gather(c.sqrt_alpha_bar, t)


def posterior_mean_variance(c: DDPMCoefficients, x0: torch.Tensor, x_t: torch.Tensor,
                            t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, Eqs. 6-7)."""
    mean = _gather(c.posterior_mean_coef_x0, t) * x0 + _gather(c.posterior_mean_coef_xt, t) * x_t
    return mean, _gather(c.posterior_variance, t)


def sampler_variance(c: DDPMCoefficients, t: torch.Tensor, variance: Variance) -> torch.Tensor:
    """sigma_t^2 of the reverse step (Ho et al. 2020, Sec. 3.2): beta-tilde_t ("posterior") or beta_t ("beta")."""
    table = c.posterior_variance if variance == "posterior" else c.betas
    return _gather(table, t)


def ancestral_step(c: DDPMCoefficients, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                   noise: torch.Tensor, variance: Variance = "posterior",
                   clip_denoised: bool = False) -> torch.Tensor:
    """One step of Algorithm 2 of Ho et al. 2020: x_{t-1} = mu_theta(x_t, t) + sigma_t z.

    Without clipping, mu_theta is Eq. 11: (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_t),
    which is the seed's formula. With ``clip_denoised`` the predicted x_0 is clipped to [-1, 1]
    and plugged into the posterior mean (Eq. 7), as improved-diffusion does; unclipped, the
    two are the same quantity. No noise is added at the last step (t = 0).

    :param noise: (B, C, H, W) standard normal draws z.
    """
    if clip_denoised:
        x0 = predict_x0(c, x_t, t, eps).clamp(-1.0, 1.0)
        mean, _ = posterior_mean_variance(c, x0, x_t, t)
    else:
        mean = _gather(c.sqrt_recip_alphas, t) * (x_t - _gather(c.betas / c.sqrt_one_minus_alpha_bar, t) * eps)
    sigma = sampler_variance(c, t, variance).sqrt()
    nonzero = (t > 0).float()[:, None, None, None]  # no noise at the final step
    return mean + nonzero * sigma * noise


def ddim_timesteps(num_steps: int, sample_steps: int) -> list[int]:
    """Evenly spaced 0-based timesteps for a strided sampler, descending, always ending at 0."""
    if not 1 <= sample_steps <= num_steps:
        raise ValueError(f"invalid steps={sample_steps}: valid values are 1 to {num_steps}")
    ts = np.linspace(0, num_steps - 1, sample_steps).round().astype(int)
    return sorted(set(ts.tolist()), reverse=True)


def ddim_step(c: DDPMCoefficients, x_t: torch.Tensor, t: int, t_prev: int, eps: torch.Tensor,
              noise: torch.Tensor | None, eta: float = 0.0, clip_denoised: bool = True) -> torch.Tensor:
    """One DDIM step from t to t_prev (Song et al. 2021, Eq. 12; t_prev = -1 means x_0).

    sigma = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev) (Eq. 16); eta = 0 is deterministic.
    """
    a_t = c.alpha_bar[t]
    a_prev = c.alpha_bar[t_prev] if t_prev >= 0 else torch.ones_like(a_t)
    batch_t = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
    x0 = predict_x0(c, x_t, batch_t, eps)
    if clip_denoised:
        x0 = x0.clamp(-1.0, 1.0)
        eps = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()  # the noise consistent with the clipped x_0
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    x_prev = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
    if eta > 0 and noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev
