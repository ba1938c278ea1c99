"""Lossy latent codes for `textvae encode --bits B`: each dimension of a code as a B-bit integer.

The quantiser has equal-mass bins under the prior N(0, 1): u = Phi(z) is cut into 2^B equal
intervals, so every level is used equally often by codes that follow the prior; dequantising
gives each bin's median. scripts/bench_bits.py measures reconstruction quality against B.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from textvae.errors import UserError


def quantize_codes(codes: torch.Tensor, bits: int) -> np.ndarray:
    """Codes (n, D) to `bits`-bit integers per dimension, packed into (n, ceil(D*bits/8)) bytes.

    The quantiser has equal-mass bins under the prior N(0, 1): u = Phi(z) is cut into 2^bits
    equal intervals, so every level is used equally often by codes that follow the prior, and
    `dequantize_codes` returns each bin's median, Phi^-1((k + 1/2) / 2^bits)."""
    check_bits(bits)
    normal = torch.distributions.Normal(0.0, 1.0)
    levels = 2**bits
    index = (normal.cdf(codes.double()) * levels).floor().clamp(0, levels - 1).long().numpy()  # (n, D)
    bit_planes = (index[..., None] >> np.arange(bits - 1, -1, -1)) & 1  # (n, D, bits), most significant first
    return np.packbits(bit_planes.reshape(index.shape[0], -1).astype(np.uint8), axis=1)


def dequantize_codes(packed: np.ndarray, bits: int, latent_dim: int) -> torch.Tensor:
    """Float32 codes (n, D) back from `quantize_codes`' bytes: each bin's median under the prior."""
    check_bits(bits)
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.ndim != 2 or packed.shape[1] != math.ceil(latent_dim * bits / 8):
        raise UserError(f"quantised codes have shape {packed.shape}, expected (n, {math.ceil(latent_dim * bits / 8)}) "
                        f"for {bits} bits x {latent_dim} dimensions")
    bit_planes = np.unpackbits(packed, axis=1)[:, : latent_dim * bits].reshape(-1, latent_dim, bits)
    index = (bit_planes.astype(np.int64) << np.arange(bits - 1, -1, -1)).sum(-1)  # (n, D)
    normal = torch.distributions.Normal(0.0, 1.0)
    return normal.icdf((torch.from_numpy(index).double() + 0.5) / 2**bits).float()


def check_bits(bits: int) -> int:
    if not 1 <= bits <= 16:
        raise UserError(f"--bits must be between 1 and 16, got {bits}")
    return bits
