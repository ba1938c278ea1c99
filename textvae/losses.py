"""Gaussian KL, free bits and the KL-weight (beta) schedules.

- `gaussian_kl`: KL(N(mean, exp(logvar)) || N(0, I)) per dimension, analytic.
- `free_bits_kl`: the KL term the loss optimises under a per-dimension floor of `free_bits`
  nats (Kingma et al. 2016): each dimension's batch-mean KL is clamped from below, so
  dimensions under the floor get no gradient pushing them to the prior. The reported KL is
  always the unclamped one.
- `kl_weight`: beta at a global step for the four schedules of SPEC §6.
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


def kl_weight(step: int, config: KLConfig) -> float:
    """beta for optimizer step `step` (0-based)."""
    top = config.max_beta
    if config.schedule == "constant":
        return top
    if config.schedule == "linear":
        return top if config.warmup_steps == 0 else top * min(1.0, step / config.warmup_steps)
    if config.schedule == "logistic":
        exponent = -config.k * (step - config.x0)
        return top / (1.0 + math.exp(min(exponent, 700.0)))
    if config.schedule == "cyclical":
        if step >= config.total_steps:
            return top
        period = config.total_steps / config.cycles
        phase = (step % period) / period
        return top * min(1.0, phase / config.ratio)
    raise ValueError(f"unknown KL schedule {config.schedule!r}")
