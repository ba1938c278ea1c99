"""textvae: a text variational autoencoder for sentences.

The public API: `TextVAE` (load, sample, encode, decode, interpolate, score, save),
`load_config` and `Config`, `train` and `evaluate_model`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textvae.errors import UserError

if TYPE_CHECKING:
    from textvae.config import Config

__version__ = "0.1.0"


def train(config: Config, resume: bool = False, overwrite: bool = False):
    """Train as `config` says; returns the run directory (see textvae.training.train)."""
    from textvae.training import train as _train

    return _train(config, resume=resume, overwrite=overwrite)


def evaluate_model(model: str = "runs/latest", split: str = "test", iw_samples: int | None = 500, **options):
    """The metrics of a saved model on a split (see textvae.api.evaluate_model and docs/metrics.md)."""
    from textvae.api import evaluate_model as _evaluate

    return _evaluate(model, split, iw_samples, **options)


def __getattr__(name: str):
    # Loaded on first use so that `import textvae` (and the CLI's start-up) does not import torch.
    if name == "TextVAE":
        from textvae.api import TextVAE

        return TextVAE
    if name in ("Config", "load_config"):
        from textvae import config

        return getattr(config, name)
    raise AttributeError(f"module 'textvae' has no attribute {name!r}")


__all__ = ["TextVAE", "Config", "load_config", "train", "evaluate_model", "UserError", "__version__"]
