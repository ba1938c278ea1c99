"""Wall time and MFU of the importance-weighted NLL (K = 500) on PTB test; prints one JSON line.

    python scripts/bench_eval.py --model runs/ptb [--iw-samples 500] [--limit 300] [--device cuda]
    python scripts/bench_eval.py --config configs/ptb.yaml --limit 300    # untrained weights

With --limit N only the first N test sentences are timed and the full-split time is
extrapolated by token count (`extrapolated: true` in the JSON). FLOPs count 2 x the decoder
weights per token evaluation (K per target token) plus attention terms; the encoder runs once
per sentence and is a rounding error. --device (default auto) is where the model runs, and where
the matmul rates behind MFU are measured: mfu over the float32 rate, mfu_bf16 over the bf16 rate,
mfu_peak over the faster of the two. --precision bf16 on a CPU without bf16 instructions runs in
float32, as every textvae command does there ("precision" says what ran).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from textvae.api import TextVAE
from textvae.benchmarking import device_arg, machine, matmul_gflops, model_flops_per_token, synchronize
from textvae.config import load_config
from textvae.data import load_corpus
from textvae.model import VAE
from textvae.evaluate import score_ids


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="trained model or run directory")
    source.add_argument("--config", help="config for an untrained model of the same shape")
    parser.add_argument("--iw-samples", type=int, default=500)
    parser.add_argument("--precision", choices=("32", "bf16"), default="32", help="bf16: autocast")
    parser.add_argument("--limit", type=int, default=None, help="time only the first N test sentences")
    parser.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda, cuda:N or mps")
    args = parser.parse_args(argv)
    device = args.device
    if args.model:
        vae = TextVAE.from_pretrained(args.model, device=device, precision=args.precision)
        corpus, _ = load_corpus(vae.config.data, vae.tokenizer, splits=("test",))
    else:
        config = load_config(args.config)
        corpus, tokenizer = load_corpus(config.data, splits=("train", "test"))
        vae = TextVAE(VAE(config.model, tokenizer.get_vocab_size()).to(device), tokenizer, config,
                      precision=args.precision)
    ids = corpus["test"].ids
    subset = ids[: args.limit] if args.limit else ids
    fp32 = matmul_gflops(torch.float32, device=device)
    bf16 = matmul_gflops(torch.bfloat16, device=device)
    start = time.perf_counter()
    nll = score_ids(vae, subset, args.iw_samples).nll
    synchronize(device)
    seconds = time.perf_counter() - start
    subset_tokens = sum(len(x) - 1 for x in subset)
    all_tokens = sum(len(x) - 1 for x in ids)
    flops = model_flops_per_token(vae.config.model, vae.model.vocab_size, subset_tokens / len(subset), training=False)
    achieved = flops * subset_tokens * args.iw_samples / seconds / 1e9
    print(json.dumps({
        "iw_samples": args.iw_samples, "sentences": len(subset), "tokens": subset_tokens,
        "seconds_measured": seconds, "seconds": seconds * all_tokens / subset_tokens,
        "extrapolated": len(subset) < len(ids), "nll": nll.mean().item(),
        "model_gflops": achieved, "matmul_gflops_fp32": fp32, "matmul_gflops_bf16": bf16,
        "mfu": achieved / fp32, "mfu_bf16": achieved / bf16, "mfu_peak": achieved / max(fp32, bf16),
        "precision_requested": args.precision, "precision": vae.precision, "device": str(device),
        "threads": torch.get_num_threads(), "machine": machine()}))


if __name__ == "__main__":
    main()
