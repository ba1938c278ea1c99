"""Where inference runs: `resolve_device` turns a `--device` string into a checked `torch.device`.

Every place that picks a device goes through it: the CLI (before any model work, so a bad
`--device` is one line and exit status 2 and nothing is read or written), `TextVAE.from_pretrained`,
the end-of-run evaluation in training.py (with the trainer's root device) and scripts/bench_*.py.

- `auto` is CUDA when available, else Apple's MPS when available, else the CPU.
- `cuda` means the current CUDA device (`cuda:0` unless the user changed it), so that the
  result compares equal to the device the model's parameters report.
- A device that does not exist here (`cuda` without a GPU, `cuda:7` on a machine with fewer,
  `mps` off a Mac, `tpu`) is a `UserError` naming what is available. A `torch.device` of
  another type (e.g. a Lightning trainer's XLA device) comes from code, not from a user, and is
  returned as it is.
- On CUDA, float32 matmuls may use TF32 (`torch.set_float32_matmul_precision("high")`): about
  8x the float32 matmul rate on Ampere and later, with 10-bit mantissas in the products and
  float32 sums, which is what Lightning recommends for training and is ample for evaluation.
"""

from __future__ import annotations

import torch

from textvae.errors import UserError

CHOICES = "auto, cpu, cuda, cuda:N or mps"


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The `torch.device` that `device` ("auto", "cpu", "cuda", "cuda:N", "mps" or a
    `torch.device`) names on this machine; a `UserError` if it is malformed or absent."""
    if isinstance(device, torch.device) and device.type not in ("cpu", "cuda", "mps"):
        return device
    spec = "auto" if device is None else str(device).strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    try:
        resolved = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UserError(f"--device must be {CHOICES}, got {str(device)!r}") from None
    if resolved.type == "cpu":
        return torch.device("cpu")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {device}: CUDA is not available on this machine (use --device cpu or auto)")
        index = torch.cuda.current_device() if resolved.index is None else resolved.index
        if index >= count:
            raise UserError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
        torch.set_float32_matmul_precision("high")
        return torch.device("cuda", index)
    if resolved.type == "mps":
        if not _mps_available():
            raise UserError(f"--device {device}: MPS is not available on this machine (use --device cpu or auto)")
        return torch.device("mps")
    raise UserError(f"--device must be {CHOICES}, got {str(device)!r}")
