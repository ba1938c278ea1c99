"""Generation throughput: sentences/s for 1,000 prior samples, batched; one JSON line per case.

    python scripts/bench_generate.py --model runs/ptb [--device cuda]  # a trained model
    python scripts/bench_generate.py --config configs/ptb.yaml configs/ptb_transformer.yaml  # untrained weights

Cases per decoder and precision (--precision 32 bf16: float32 and bfloat16 autocast): greedy
and top-p 0.9 (each row stops at its own <eos>); for a transformer decoder also greedy without
the key/value cache, and (float32) a fixed-length case (<eos> masked, so
every output is exactly --max-length tokens) timing cached against uncached decoding and
checking that both give identical outputs. --device (default auto) is where the models run.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from textvae.api import TextVAE, autocast
from textvae.benchmarking import NoEOS, device_arg, machine, synchronize
from textvae.config import load_config
from textvae.generate import decode_codes
from textvae.model import VAE


def untrained(config_path: str, vocab_size: int = 10002) -> VAE:
    return VAE(load_config(config_path).model, vocab_size).eval()


def time_case(model, latent_dim: int, count: int, batch_size: int, precision: str = "32",
              device: torch.device = torch.device("cpu"), **kwargs) -> tuple[float, float]:
    generator = torch.Generator(device=device).manual_seed(0)
    z = torch.randn(count, latent_dim, generator=generator, device=device)
    with autocast(device, precision):
        decode_codes(model, z[:batch_size], **kwargs)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        tokens = 0
        for first in range(0, count, batch_size):
            outputs = decode_codes(model, z[first: first + batch_size], generator=generator, **kwargs)
            tokens += sum(len(o) + 1 for o in outputs)
        synchronize(device)
        seconds = time.perf_counter() - start
    return count / seconds, tokens / count


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="trained model or run directory")
    source.add_argument("--config", nargs="+", help="configs whose (untrained) models to time")
    parser.add_argument("--n", type=int, default=1000, help="sentences per case")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--max-length", type=int, default=50)
    parser.add_argument("--precision", nargs="+", choices=("32", "bf16"), default=["32", "bf16"])
    parser.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda, cuda:N or mps")
    args = parser.parse_args(argv)
    device = args.device
    if args.model:
        vae = TextVAE.from_pretrained(args.model, device=device)
        models = {vae.config.model.decoder.type: vae.model}
    else:
        models = {}
        for path in args.config:
            model = untrained(path).to(device)
            models[model.config.decoder.type] = model
    info = machine()
    for kind, model in models.items():
        latent_dim = model.config.latent_dim
        cases = [("greedy", True, {}), ("sample", True, {"top_p": 0.9})]
        if kind == "transformer":
            cases.append(("greedy", False, {}))
        for precision in args.precision:
            for strategy, cache, extra in cases:
                rate, length = time_case(model, latent_dim, args.n, args.batch_size, precision, device,
                                         strategy=strategy, max_length=args.max_length, use_cache=cache, **extra)
                print(json.dumps({"decoder": kind, "strategy": strategy + ("_top_p0.9" if extra else ""),
                                  "cache": cache, "precision": precision, "device": str(device),
                                  "sentences_per_s": rate,
                                  "mean_tokens": length, "n": args.n, "machine": info}))
        if kind == "transformer":
            fixed = NoEOS(model)
            rates = {}
            for cache in (True, False):
                rates[cache], _ = time_case(fixed, latent_dim, args.n // 4, args.batch_size // 2, device=device,
                                            strategy="greedy", max_length=args.max_length, use_cache=cache)
            zeros = torch.zeros(4, latent_dim, device=device)
            same = decode_codes(fixed, zeros, max_length=args.max_length, use_cache=True) == \
                decode_codes(fixed, zeros, max_length=args.max_length, use_cache=False)
            print(json.dumps({"decoder": kind, "strategy": "greedy", "case": f"fixed_{args.max_length}_tokens",
                              "cached_sentences_per_s": rates[True], "uncached_sentences_per_s": rates[False],
                              "cache_speedup": rates[True] / rates[False], "identical_outputs": same,
                              "machine": info}))


if __name__ == "__main__":
    main()
