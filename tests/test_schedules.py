import math

import numpy as np
import pytest

from core.schedules import SCHEDULES, cosine_betas, get_betas, learning_rate, linear_betas, shared_updates


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_alpha_bar_strictly_decreasing_in_unit_interval(name):
    alpha_bar = np.cumprod(1 - get_betas(name, 1000))
    assert np.all(np.diff(alpha_bar) < 0)
    assert 0 < alpha_bar[-1] < alpha_bar[0] < 1


def test_linear_endpoints():
    betas = linear_betas(1000)
    assert betas.shape == (1000,)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)


def test_cosine_formula_at_a_few_t():
    s, T = 0.008, 1000
    alpha_bar = np.cumprod(1 - cosine_betas(T))
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # Nichol & Dhariwal 2021, Eq. 17
    for t in (1, 10, 250, 500, 900):  # 1-based t: alpha_bar_t = f(t) / f(0); the clip only binds near T
        assert alpha_bar[t - 1] == pytest.approx(f(t) / f(0), rel=1e-9)


def test_cosine_betas_clipped_at_0_999():
    betas = cosine_betas(1000)
    assert betas.max() == pytest.approx(0.999) and betas.min() > 0


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ValueError, match=r"schedule='cosin'.*'cosine' or 'linear'"):
        get_betas("cosin")


def test_learning_rate_schedules():
    """"constant" is the base rate at every update; "cosine" anneals it from the base at the first update,
    through half of it midway, to 0 at the budget (Loshchilov & Hutter 2017, Eq. 5), and stays there."""
    assert {learning_rate(1e-3, "constant", s, 100) for s in (0, 50, 99, 150)} == {1e-3}
    cosine = [learning_rate(1e-3, "cosine", s, 100) for s in range(101)]
    assert cosine[0] == 1e-3 and cosine[50] == pytest.approx(5e-4)
    assert cosine[25] == pytest.approx(1e-3 * (2 + 2 ** 0.5) / 4)  # 1/2 (1 + cos(pi / 4))
    assert all(a > b for a, b in zip(cosine, cosine[1:])) and cosine[99] > 0 and cosine[100] == 0
    assert learning_rate(1e-3, "cosine", 120, 100) == 0


def test_a_cooldown_keeps_the_base_rate_until_its_last_fifth_and_shares_those_updates_with_the_constant_rate():
    """"cooldown" is the base rate for 80 updates of 100, then falls linearly towards 0 at the budget over the last
    20 (Hagele et al. 2024); the updates a run shares with the constant-rate run are those at the base rate itself:
    all but the cool-down, one of a cosine run, all of a constant one."""
    cooldown = [learning_rate(1e-3, "cooldown", s, 100) for s in range(101)]
    assert set(cooldown[:80]) == {1e-3} and cooldown[80] == pytest.approx(1e-3 * 20 / 21) and cooldown[100] == 0
    assert all(a > b for a, b in zip(cooldown[79:], cooldown[80:])) and cooldown[99] == pytest.approx(1e-3 / 21)
    assert sum(cooldown[:100]) / 100 == pytest.approx(0.9 * 1e-3)  # the mean rate: 90% of the constant's
    assert [shared_updates(name, 100) for name in ("constant", "cosine", "cooldown")] == [100, 1, 80]
    assert shared_updates("cooldown", 16_000) == 12_800 and shared_updates("cooldown", 1) == 1
    assert [learning_rate(1.0, "cooldown", s, 5) for s in range(5)] == [1.0, 1.0, 1.0, 1.0, 0.5]  # 1 of 5 cools
