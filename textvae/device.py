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
- bfloat16 pays only where the hardware has it: `fast_bf16` says whether it does. CPUs without
  bf16 instructions (AVX2-only x86, such as many AMD EPYC and older Xeon and laptop parts) run
  bf16 matrix products through a slow emulation, tens of times slower than float32 (measured on
  a 2-core AVX2 AMD EPYC: about 1 GFLOP/s against 69 per core), so there bf16 falls back to
  float32 with a warning: `--precision bf16` on the inference commands and
  `trainer.precision: bf16-*` when training on the CPU.
"""

from __future__ import annotations

import functools
import logging

import torch

from textvae.errors import UserError

log = logging.getLogger("textvae")

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


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            return {flag for line in handle if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        return set()


@functools.cache
def _cpu_bf16() -> bool:
    try:  # oneDNN's own test: AVX-512 (bf16 by conversion), AVX512_BF16, AMX, or Arm's bf16
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16", "avx512f", "bf16"})


def fast_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matrix products on `device` are native (at least as fast as float32):
    CUDA with bf16 support (Ampere and later), Apple's MPS, a CPU with AVX-512 or bf16
    instructions; not an AVX2-only CPU, where they are emulated and far slower."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_bf16()
    return True


def bf16_fallback(device: torch.device, what: str) -> bool:
    """True, after one warning naming `what`, when bfloat16 asked for on `device` should run in
    float32 instead (see fast_bf16); False where bf16 is native."""
    if fast_bf16(device):
        return False
    log.warning("%s: bfloat16 is emulated on this %s (its matrix products run many times slower than float32); "
                "running in float32", what, "CPU" if device.type == "cpu" else "GPU")
    return True
