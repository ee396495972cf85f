"""Beta schedules, and learning-rate schedules, by name.

Append-only: a committed schedule is never changed, because stored runs name
their schedules and must mean the same thing when re-executed. Add a new name
instead.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np


def linear_betas(noise_steps: int = 1000, max_beta: float = 0.999) -> np.ndarray:
    """Ho et al. 2020, Sec. 4: betas rising linearly from 1e-4 to 0.02 (for T = 1000).

    :param noise_steps: T, the number of diffusion steps.
    :param max_beta: clip for very short schedules, where the scaled endpoint would reach 1.
    :return: float64 array of shape (T,).
    """
    # The endpoints are scaled by 1000 / T so that other T keep about the same total noise
    # (the convention of Nichol & Dhariwal 2021); at T = 1000 they are exactly 1e-4 and 0.02.
    scale = 1000 / noise_steps
    return np.clip(np.linspace(scale * 1e-4, scale * 0.02, noise_steps, dtype=np.float64), 0.0, max_beta)


def cosine_alpha_bar(t: np.ndarray, s: float = 0.008) -> np.ndarray:
    """Nichol & Dhariwal 2021, Eq. 17: f(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), t in [0, 1]."""
    return np.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def cosine_betas(noise_steps: int = 1000, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal 2021, Sec. 3.2: betas from the cosine alpha-bar, clipped at 0.999.

    :param noise_steps: T, the number of diffusion steps.
    :param max_beta: the clip that prevents a singularity at t = T.
    :return: float64 array of shape (T,).
    """
    t = np.arange(noise_steps + 1, dtype=np.float64) / noise_steps
    alpha_bar = cosine_alpha_bar(t) / cosine_alpha_bar(np.zeros(1))  # Eq. 17: alpha_bar_t = f(t) / f(0)
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]  # beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}
    return np.clip(betas, 0.0, max_beta)


SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {
    "cosine": cosine_betas,
    "linear": linear_betas,
}


def get_betas(name: str, noise_steps: int = 1000) -> np.ndarray:
    """The betas of schedule ``name`` (one of :data:`SCHEDULES`) for ``noise_steps`` steps."""
    if name not in SCHEDULES:
        raise ValueError(f"invalid schedule={name!r}: valid values are {' or '.join(map(repr, SCHEDULES))}")
    return SCHEDULES[name](noise_steps)


def constant_rate(step: int, train_steps: int) -> float:
    """The seed's Adam: the same rate at every step (factor 1)."""
    return 1.0


def cosine_rate(step: int, train_steps: int) -> float:
    """Cosine annealing without restarts (Loshchilov & Hutter 2017, Eq. 5, eta_min = 0): the factor
    1/2 (1 + cos(pi s / S)) of the base rate at update s of S, from 1 at the first update towards 0 at the last.

    :param step: updates already taken (0 for the first).
    :param train_steps: S, the run's whole budget: the rate of an update depends on it.
    """
    return 0.5 * (1.0 + math.cos(math.pi * min(step, train_steps) / train_steps))


COOLDOWN_FRACTION = 0.2  # of the budget: Hagele et al. 2024 find 20% enough to match a cosine schedule


def cooldown_start(train_steps: int) -> int:
    """The last update (0-based) of a ``train_steps`` run at the base rate under :func:`cooldown_rate`: the
    :data:`COOLDOWN_FRACTION` of the updates after it cool down."""
    return train_steps - round(COOLDOWN_FRACTION * train_steps) - 1


def cooldown_rate(step: int, train_steps: int) -> float:
    """The base rate, then a linear cool-down towards 0 at the budget over its last :data:`COOLDOWN_FRACTION`: the
    warm-up-stable-decay schedule of Hagele et al. 2024 ("Scaling Laws and Compute-Optimal Training Beyond Fixed
    Training Durations", Sec. 3) without its warm-up, which the seed's Adam does not have either.

    The factor is exactly 1 up to :func:`cooldown_start`, so a run keeps the constant rate's mean rate almost
    whole, and is the constant-rate run bit for bit until its cool-down: runs of several budgets branch from one
    constant-rate run (see :func:`shared_updates`).
    """
    start = cooldown_start(train_steps)
    return 1.0 if step <= start else max(0.0, (train_steps - step) / (train_steps - start))


LR_SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "constant": constant_rate,
    "cosine": cosine_rate,
    "cooldown": cooldown_rate,
}


def shared_updates(name: str, train_steps: int) -> int:
    """How many first updates of a ``train_steps`` run under schedule ``name`` take the base rate itself (factor
    exactly 1): those it shares, bit for bit, with the constant-rate run of the same config. A cosine run shares
    its first; a cool-down run all but its cool-down; a constant one all."""
    factor = LR_SCHEDULES[name]
    return next((step for step in range(train_steps) if factor(step, train_steps) != 1.0), train_steps)


def learning_rate(base: float, name: str, step: int, train_steps: int) -> float:
    """The rate of update ``step`` (0-based) of a ``train_steps`` run under schedule ``name`` of :data:`LR_SCHEDULES`.

    A pure function of the step, so a resumed or fused run needs no scheduler state to follow it.
    """
    return base * LR_SCHEDULES[name](step, train_steps)
