"""Gaussian KL, free bits and the KL-weight (beta) schedules.

- `gaussian_kl`: KL(N(mean, exp(logvar)) || N(0, I)) per dimension, analytic.
- `free_bits_kl`: the KL term the loss optimises under a per-dimension floor of `free_bits`
  nats (Kingma et al. 2016): each dimension's batch-mean KL is clamped from below, so
  dimensions under the floor get no gradient pushing them to the prior. The reported KL is
  always the unclamped one.
- `kl_weight`: beta at a global step for the four schedules (constant, linear, logistic, cyclical).
- Rate control (`kl.target_rate`, nats per sentence): with `rate_control: free_bits` the floor is
  target_rate / latent_dim per dimension; with `rate_control: beta`, `controlled_log_beta` is a
  feedback controller in the spirit of ControlVAE (Shao et al. 2020) and GECO (Rezende & Viola
  2018): after every step log(beta) moves against the relative error of the batch KL, so beta
  settles where the KL the encoder finds worth paying for equals the target. Unlike a free-bits
  floor, the KL keeps its gradient, so the encoder is not paid to send information the decoder
  does not use.
"""

from __future__ import annotations

import math

import torch

from textvae.config import KLConfig


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-dimension KL(q || N(0, I)) for a diagonal Gaussian q, shape as `mean`."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


def free_bits_kl(kl_per_dim: torch.Tensor, free_bits: float) -> torch.Tensor:
    """Per-sentence KL for the loss (B,), each dimension's batch mean floored at `free_bits`."""
    if free_bits <= 0:
        return kl_per_dim.sum(-1)
    batch_mean = kl_per_dim.mean(0)  # (D,)
    # Dimensions under the floor contribute the constant floor (no gradient); others as usual.
    clamped = torch.where(batch_mean < free_bits, torch.full_like(kl_per_dim, free_bits), kl_per_dim)
    return clamped.sum(-1)


def effective_free_bits(config: KLConfig, latent_dim: int) -> float:
    """The per-dimension floor the loss uses: `free_bits`, or target_rate / latent_dim."""
    if config.target_rate is not None and config.rate_control == "free_bits":
        return config.target_rate / latent_dim
    return config.free_bits


def controlled_log_beta(log_beta: float, kl: float, config: KLConfig) -> float:
    """The controller's next log(beta) after a step whose mean KL per sentence was `kl`.

    The relative error (kl - target) / target is clipped to [-1, 1], so one step moves log(beta)
    by at most `controller_gain`; the result stays within [log min_beta, log max_beta].
    """
    error = max(-1.0, min(1.0, (kl - config.target_rate) / config.target_rate))
    return max(math.log(config.min_beta), min(math.log(config.max_beta), log_beta + config.controller_gain * error))


def kl_weight(step: int, config: KLConfig, total_steps: int | None = None) -> float:
    """beta for optimizer step `step` (0-based) under the schedule; `total_steps` is the run's
    length, which the cyclical schedule spans unless `kl.total_steps` is set."""
    top = config.max_beta
    if config.schedule == "constant":
        return top
    if config.schedule == "linear":
        return top if config.warmup_steps == 0 else top * min(1.0, step / config.warmup_steps)
    if config.schedule == "logistic":
        exponent = -config.k * (step - config.x0)
        return top / (1.0 + math.exp(min(exponent, 700.0)))
    if config.schedule == "cyclical":
        span = config.total_steps or total_steps
        if span is None:
            raise ValueError("the cyclical schedule needs kl.total_steps or the run's total steps")
        if step >= span:
            return top
        period = span / config.cycles
        phase = (step % period) / period
        return top * min(1.0, phase / config.ratio)
    raise ValueError(f"unknown KL schedule {config.schedule!r}")
