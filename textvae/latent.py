"""Helpers on latent codes that need no model: paths between codes.

Below both the evaluation (interpolation metrics) and the public API (`TextVAE.interpolate`).
"""

from __future__ import annotations

import torch


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (T, D) between codes a and b (D,); linear when they are parallel."""
    cos = torch.clamp(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-12), -1.0, 1.0)
    omega = torch.arccos(cos)
    t = t.unsqueeze(1)  # (T, 1)
    if omega.abs() < 1e-6:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
