"""Gaussian KL, the free-bits floor and the four KL-weight schedules (constant, linear, logistic, cyclical)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from textvae.config import KLConfig
from textvae.losses import controlled_log_beta, effective_free_bits, free_bits_kl, gaussian_kl, kl_weight


def test_gaussian_kl_matches_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    mean = 2.0 * torch.randn(16, 8, generator=generator, dtype=torch.float64)
    logvar = 1.5 * torch.randn(16, 8, generator=generator, dtype=torch.float64)
    ours = gaussian_kl(mean, logvar)
    assert ours.shape == mean.shape
    reference = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(torch.zeros_like(mean), 1.0))
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(ours.sum(-1), reference.sum(-1))


def test_gaussian_kl_is_zero_only_at_the_prior():
    zeros = torch.zeros(3, 5)
    assert torch.equal(gaussian_kl(zeros, zeros), zeros)
    assert (gaussian_kl(zeros + 0.1, zeros) > 0).all()
    assert (gaussian_kl(zeros, zeros - 0.1) > 0).all()


def _posterior_with_known_batch_kl():
    """(mean, logvar) for 4 sentences x 3 dims: dim 0 has batch-mean KL 0.1, dims 1-2 well above 0.5."""
    mean = torch.zeros(4, 3, dtype=torch.float64)
    mean[:, 0] = math.sqrt(0.2) * torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)  # KL 0.1 each
    mean[:, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    mean[:, 2] = torch.tensor([-1.5, 0.0, 1.5, 2.5], dtype=torch.float64)
    logvar = torch.zeros(4, 3, dtype=torch.float64)
    logvar[:, 2] = -1.0
    return mean.requires_grad_(), logvar.requires_grad_()


def test_free_bits_floor_value_and_gradient():
    floor = 0.5
    mean, logvar = _posterior_with_known_batch_kl()
    kl_per_dim = gaussian_kl(mean, logvar)  # (B, D)
    batch_mean = kl_per_dim.mean(0)
    assert batch_mean[0] < floor < batch_mean[1:].min()
    floored = free_bits_kl(kl_per_dim, floor)  # (B,)
    assert floored.shape == (4,)
    # dimension 0 contributes exactly the floor; the others are unchanged
    torch.testing.assert_close(floored, floor + kl_per_dim[:, 1:].sum(-1))
    torch.testing.assert_close(floored.mean(), torch.clamp(batch_mean, min=floor).sum())
    floored.mean().backward()
    assert torch.equal(mean.grad[:, 0], torch.zeros(4, dtype=torch.float64))
    assert torch.equal(logvar.grad[:, 0], torch.zeros(4, dtype=torch.float64))
    # the dims above the floor get the gradient of the plain KL
    reference_mean, reference_logvar = _posterior_with_known_batch_kl()
    gaussian_kl(reference_mean, reference_logvar)[:, 1:].sum(-1).mean().backward()
    torch.testing.assert_close(mean.grad[:, 1:], reference_mean.grad[:, 1:])
    torch.testing.assert_close(logvar.grad[:, 1:], reference_logvar.grad[:, 1:])
    assert (reference_mean.grad[:, 1:].abs() > 0).any()


def test_free_bits_zero_is_the_plain_sum():
    mean, logvar = _posterior_with_known_batch_kl()
    kl_per_dim = gaussian_kl(mean, logvar)
    torch.testing.assert_close(free_bits_kl(kl_per_dim, 0.0), kl_per_dim.sum(-1))


def test_free_bits_floor_is_per_dimension_batch_mean_not_per_sentence():
    # one sentence far above the floor in dim 0, the rest at zero: batch mean 0.4 < 0.5 -> floored
    kl_per_dim = torch.tensor([[1.6, 2.0], [0.0, 2.0], [0.0, 2.0], [0.0, 2.0]])
    torch.testing.assert_close(free_bits_kl(kl_per_dim, 0.5), torch.full((4,), 2.5))
    # batch mean 0.6 > 0.5: per-sentence values pass through untouched, even those under the floor
    kl_per_dim[1, 0] = 0.8
    torch.testing.assert_close(free_bits_kl(kl_per_dim, 0.5), kl_per_dim.sum(-1))


@pytest.mark.parametrize("max_beta", [1.0, 0.3])
def test_constant_schedule(max_beta):
    config = KLConfig(schedule="constant", max_beta=max_beta)
    assert [kl_weight(step, config) for step in (0, 1, 500, 10**6)] == [max_beta] * 4


def test_linear_schedule_with_warmup():
    config = KLConfig(schedule="linear", max_beta=0.8, warmup_steps=100)
    assert kl_weight(0, config) == 0.0
    assert kl_weight(25, config) == pytest.approx(0.2)
    assert kl_weight(50, config) == pytest.approx(0.4)
    assert kl_weight(100, config) == pytest.approx(0.8)
    assert kl_weight(5000, config) == pytest.approx(0.8)
    values = [kl_weight(step, config) for step in range(0, 150)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert kl_weight(0, KLConfig(schedule="linear", max_beta=0.8, warmup_steps=0)) == pytest.approx(0.8)


def test_logistic_schedule():
    config = KLConfig(schedule="logistic", max_beta=0.6, k=0.01, x0=400)
    assert kl_weight(400, config) == pytest.approx(0.3)
    assert kl_weight(500, config) == pytest.approx(0.6 / (1 + math.exp(-1.0)))
    assert kl_weight(0, config) < 0.02 * 0.6
    assert kl_weight(5000, config) == pytest.approx(0.6, rel=1e-6)
    values = [kl_weight(step, config) for step in range(0, 2000, 7)]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert all(0.0 <= value <= 0.6 for value in values)
    # far from the midpoint in either direction it stays finite
    steep = KLConfig(schedule="logistic", max_beta=1.0, k=5.0, x0=1000)
    assert kl_weight(0, steep) == pytest.approx(0.0, abs=1e-12)
    assert kl_weight(10**6, steep) == pytest.approx(1.0)


def test_cyclical_schedule():
    config = KLConfig(schedule="cyclical", max_beta=0.9, cycles=4, total_steps=400, ratio=0.5)
    period = 100
    for cycle in range(4):
        start = cycle * period
        assert kl_weight(start, config) == 0.0
        assert kl_weight(start + 25, config) == pytest.approx(0.45)  # halfway up the rise of R * period
        for offset in (50, 60, 99):  # after R of the cycle: at the top
            assert kl_weight(start + offset, config) == pytest.approx(0.9)
        rise = [kl_weight(start + offset, config) for offset in range(0, 51)]
        assert all(a < b for a, b in zip(rise, rise[1:]))
    for step in (400, 401, 1000, 10**6):
        assert kl_weight(step, config) == pytest.approx(0.9)


def test_cyclical_schedule_with_uneven_period():
    config = KLConfig(schedule="cyclical", max_beta=1.0, cycles=3, total_steps=100, ratio=0.25)
    period = 100 / 3
    assert kl_weight(0, config) == 0.0
    # the first step of each later cycle restarts near zero
    for cycle in (1, 2):
        first = math.ceil(cycle * period)
        assert kl_weight(first, config) < 0.1
        assert kl_weight(first - 1, config) == pytest.approx(1.0)
    assert kl_weight(100, config) == 1.0


def test_cyclical_schedule_spans_the_run_unless_told_otherwise():
    config = KLConfig(schedule="cyclical", max_beta=1.0, cycles=2, ratio=0.5)  # total_steps: None
    assert kl_weight(50, config, total_steps=1000) == pytest.approx(0.2)  # 50 / (R * 500)
    assert kl_weight(500, config, total_steps=1000) == 0.0  # the second cycle starts half-way
    assert kl_weight(1000, config, total_steps=1000) == 1.0
    assert kl_weight(25, KLConfig(schedule="cyclical", cycles=2, ratio=0.5, total_steps=200),
                     total_steps=1000) == pytest.approx(0.5)  # a set kl.total_steps wins: 25 / (R * 100)
    with pytest.raises(ValueError):
        kl_weight(10, config)


def test_rate_control_by_free_bits_spreads_the_target_over_dimensions():
    assert effective_free_bits(KLConfig(target_rate=16.0, rate_control="free_bits"), latent_dim=32) == 0.5
    assert effective_free_bits(KLConfig(target_rate=16.0, rate_control="beta", free_bits=0.1), 32) == 0.1
    assert effective_free_bits(KLConfig(free_bits=0.25), 32) == 0.25


def test_beta_controller_moves_against_the_kl_error_and_stays_in_bounds():
    config = KLConfig(target_rate=10.0, controller_gain=0.1, min_beta=1e-3, max_beta=1.0)
    start = math.log(0.1)
    assert controlled_log_beta(start, 15.0, config) == pytest.approx(start + 0.1 * 0.5)  # too much KL: beta up
    assert controlled_log_beta(start, 5.0, config) == pytest.approx(start - 0.1 * 0.5)  # too little: down
    assert controlled_log_beta(start, 10.0, config) == pytest.approx(start)
    assert controlled_log_beta(start, 1e6, config) == pytest.approx(start + 0.1)  # one step moves at most gain
    assert controlled_log_beta(math.log(0.99), 1e6, config) == pytest.approx(0.0)  # capped at max_beta
    assert controlled_log_beta(math.log(1e-3), 0.0, config) == pytest.approx(math.log(1e-3))  # floored at min_beta
