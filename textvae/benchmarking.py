"""Measurement helpers shared by the benchmark scripts (scripts/bench_*.py) and their tests:
machine facts, matmul rate, model FLOPs. In the package so that scripts and tests import it as
`textvae.benchmarking`, whatever the working directory; nothing else in the package uses it.

`model_flops_per_token` counts 6 x the weights each predicted token touches (forward 2, backward
4) plus attention score/value terms; embedding lookups are not matrix multiplies and are left
out, and so are the per-sentence maps of z (a few per cent at most). tests/test_bench.py checks
it against torch's own FLOP counter on the real model. `matmul_gflops` times large square
`torch.matmul`s so that MFU (achieved model FLOP/s over the measured matmul rate) compares
against what this machine can do, in the same run. A pretrained encoder reads its own subword
tokens, so `pretrained_encoder_flops_per_token` counts it from the loaded module and a sample of
sentences (tests/test_pretrained.py checks it against torch's counter too).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import torch

from textvae.config import ModelConfig
from textvae.device import fast_bf16, resolve_device
from textvae.errors import UserError
from textvae.model import VAE


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_bf16": fast_bf16(torch.device("cpu")), "threads": torch.get_num_threads(), "cores": os.cpu_count(),
            "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_arg(value: str) -> torch.device:
    """argparse `type` of the scripts' --device: device.resolve_device, whose error becomes
    argparse's (one line after the usage, exit status 2)."""
    try:
        return resolve_device(value)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that wall-clock times cover it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_gflops(dtype: torch.dtype = torch.float32, size: int = 2048, seconds: float = 1.5,
                  device: torch.device = torch.device("cpu")) -> float:
    """Sustained GFLOP/s of (n x n) @ (n x n) in `dtype` on `device` (on CUDA with the float32
    matmul precision in force: TF32 after device.resolve_device), for n = `size`, or smaller
    where one product would take over a tenth of `seconds` (n doubles from 256 while it does
    not): an emulated dtype, such as bf16 on an AVX2 CPU at about 1 GFLOP/s, is measured in
    about `seconds` too instead of tens of seconds per 2048-wide product."""
    n = min(256, size)
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        torch.matmul(a, b)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        if n >= size or 8 * (time.perf_counter() - start) > seconds / 10:  # 8x: the next size's cost
            break
        n = min(2 * n, size)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        count += 1
        if count % 16 == 0:  # queued GPU work finishes before the clock is read
            synchronize(device)
    synchronize(device)
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def _transformer_layer_weights(width: int, feedforward: int) -> int:
    return 4 * width * width + 2 * width * feedforward  # q, k, v, out; feed-forward in and out


def model_flops_per_token(config: ModelConfig, vocab_size: int, mean_length: float, training: bool = True) -> float:
    """FLOPs per predicted token for a batch of sentences of `mean_length` predicted tokens."""
    multiplier = 6 if training else 2
    encoder = config.encoder
    decoder = config.decoder
    # The encoder reads <bos> w1 .. wn <eos>: n + 2 positions for the n + 1 predicted tokens.
    encoder_positions = (mean_length + 1) / mean_length
    weights = encoder.layers * _transformer_layer_weights(encoder.width, encoder.feedforward) * encoder_positions
    attention = encoder.layers * 2 * 2 * encoder.width * (mean_length + 1) * encoder_positions  # full attention
    if encoder.pretrained is not None:  # counted by pretrained_encoder_flops_per_token instead
        weights = attention = 0
    if decoder.type == "pretrained":  # counted by pretrained_decoder_flops_per_token instead
        return multiplier * weights + multiplier / 2 * attention
    if decoder.type == "gru":
        input_dim = decoder.embed_dim + (config.latent_dim if decoder.z_concat_input else 0)
        weights += 3 * decoder.hidden * (input_dim + decoder.hidden)
        weights += 3 * decoder.hidden * 2 * decoder.hidden * (decoder.layers - 1)
        embed_dim = decoder.embed_dim
    else:
        weights += decoder.layers * _transformer_layer_weights(decoder.hidden, decoder.feedforward)
        attention += decoder.layers * 2 * 2 * decoder.hidden * (mean_length / 2)  # causal: half on average
        if decoder.z_cross_attention:
            # queries and output per token; keys and values only for the memory slots of each sentence
            slots_per_token = decoder.memory_slots / mean_length
            weights += decoder.layers * 2 * decoder.hidden * decoder.hidden * (1 + slots_per_token)
            attention += decoder.layers * 2 * 2 * decoder.hidden * decoder.memory_slots
        embed_dim = decoder.hidden
    if decoder.tie_embeddings:
        weights += (decoder.hidden * embed_dim if decoder.hidden != embed_dim else 0) + embed_dim * vocab_size
    else:
        weights += decoder.hidden * vocab_size
    return multiplier * weights + multiplier / 2 * attention


def pretrained_encoder_flops_per_token(encoder, ids: list[list[int]], training: bool = True) -> float:
    """FLOPs per predicted token of a pretrained encoder (textvae.pretrained.PretrainedEncoder) over
    framed sentences `ids`: 2 x its linear layers' weights per position it reads (its own
    subword tokens, [CLS]/[SEP] included) plus attention, as in model_flops_per_token; x 3 when it
    is fine-tuned, x 1 when frozen (forward only, no backward through it)."""
    from textvae.tokenizer import pad_batch, special_ids

    sample = ids[:2000]
    # Padded with the corpus tokenizer's own pad id, which texts() drops (a subword vocabulary's
    # pad is not textvae's word-level one; padding read as text would count as positions).
    padded = pad_batch(sample, special_ids(encoder.tokenizer).pad)
    lengths = [len(row) for row in encoder.hf_tokenizer(encoder.texts(padded))["input_ids"]]
    weights = sum(module.weight.numel() for module in encoder.hf.modules() if isinstance(module, torch.nn.Linear))
    hf = encoder.hf.config
    attention = sum(2 * 2 * hf.num_hidden_layers * hf.hidden_size * length * length for length in lengths)
    forward = 2 * weights * sum(lengths) + attention
    predicted = sum(len(row) - 1 for row in sample)  # w1 .. wn <eos>
    return (3 if training and not encoder.freeze else 1) * forward / predicted


def pretrained_decoder_flops_per_token(decoder, mean_length: float, training: bool = True) -> float:
    """FLOPs per predicted token of a pretrained causal LM decoder (textvae.pretrained.
    PretrainedDecoder): 2 x its matrix weights (nn.Linear and GPT-2's Conv1D, the LM head included)
    per position, plus causal attention over half the sentence and z's memory slot, as in
    model_flops_per_token; x 3 when it is fine-tuned, x 2 when frozen (the gradient still flows
    back through it to z, without weight gradients)."""
    from transformers.pytorch_utils import Conv1D

    hf = decoder.hf
    weights = sum(module.weight.numel() for module in hf.modules() if isinstance(module, (torch.nn.Linear, Conv1D)))
    memory = 1 if decoder.z_to_memory is not None else 0
    query_width = hf.config.num_attention_heads * decoder.head_dim  # every query head, also under GQA
    attention = 2 * 2 * decoder.layers * query_width * (mean_length / 2 + memory)
    forward = 2 * weights + attention
    return (2 if decoder.freeze else 3) * forward if training else forward


class NoEOS(torch.nn.Module):
    """Wraps a model so that <eos> is never chosen: every output runs to max_length."""

    def __init__(self, model: VAE):
        super().__init__()
        self.model, self.decoder, self.specials = model, model.decoder, model.specials

    def logits(self, features):
        logits = self.model.logits(features)
        logits[..., self.specials.eos] = float("-inf")
        return logits
