"""One decoding step for decoders that keep a key/value cache in their decoding state.

Shared by model.py's transformer decoder and pretrained.py's causal-LM decoder (both keep the
cache in `state`); it sits below both so that neither imports the other for it.
"""

from __future__ import annotations

import torch
from torch import nn


def cached_step(decoder: nn.Module, token: torch.Tensor, state: dict, use_cache: bool = True):
    """One decoding step (features (B, H), next state) for a decoder whose `forward(inputs, z,
    state, use_cache)` keeps a key/value cache in `state`; without the cache the whole prefix is
    re-run every step (kept for tests and benchmarks: the outputs must be identical)."""
    if use_cache:
        features, state = decoder(token.unsqueeze(1), state["z"], state, use_cache=True)
        return features[:, 0], state
    prefix = token.unsqueeze(1) if state["prefix"] is None else torch.cat([state["prefix"], token[:, None]], 1)
    features, _ = decoder(prefix, state["z"], dict(state, position=0))
    return features[:, -1], dict(state, prefix=prefix, position=prefix.size(1))
