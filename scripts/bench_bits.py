"""Lossy codes (`textvae encode --bits B`): reconstruction quality against bits per dimension; one
JSON line.

    python scripts/bench_bits.py --model runs/ptb [--split test] [--sentences 1000] [--bits 1 2 3 4 6 8]

The first N sentences of the split are encoded (posterior means), quantised to B bits per
dimension with the same equal-mass bins `encode --bits` writes, read back as `decode` reads them,
and greedily decoded. For each B: the code size in bytes per sentence, rec_bleu and rec_exact
against the sentences (as in `textvae evaluate`), and the share of decodes identical to those of
the unquantised codes. A row `"bits": null` is the float32 code (128 bytes at 32 dimensions).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import torch

from textvae.benchmarking import device_arg, machine
from textvae.api import TextVAE
from textvae.quantize import dequantize_codes, quantize_codes
from textvae.data import load_corpus
from textvae.metrics import corpus_bleu, exact_share
from textvae.tokenizer import decode_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/latest")
    parser.add_argument("--split", default="test", choices=["valid", "test"])
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--bits", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8])
    parser.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda, cuda:N or mps")
    args = parser.parse_args()

    vae = TextVAE.from_pretrained(args.model, device=args.device)
    data = dataclasses.replace(vae.config.data, max_length=10**9)
    corpus, _ = load_corpus(data, vae.tokenizer, splits=(args.split,))
    ids, _ = vae.clip_to_model([list(x) for x in corpus[args.split].ids[: args.sentences]])
    references = list(decode_ids(vae.tokenizer, (x[1:] for x in ids)))
    max_length = vae.clamp_length(max(len(x) for x in ids) + 9)
    with torch.no_grad():
        codes = vae.encode(references).float().cpu()
        exact_decodes = vae.decode(codes.to(vae.device), strategy="greedy", max_length=max_length)
        rows = []
        for bits in [None, *args.bits]:
            if bits is None:
                z, size = codes, 4 * vae.latent_dim
            else:
                packed = quantize_codes(codes, bits)
                z, size = dequantize_codes(packed, bits, vae.latent_dim), packed.shape[1]
            decoded = exact_decodes if bits is None else vae.decode(z.to(vae.device), strategy="greedy",
                                                                    max_length=max_length)
            rows.append({
                "bits": bits, "bytes_per_sentence": size,
                "rec_bleu": corpus_bleu(decoded, references),
                "rec_exact": exact_share(decoded, references),
                "same_as_float": sum(a == b for a, b in zip(decoded, exact_decodes)) / len(references),
                "rmse": math.sqrt(float((z - codes).pow(2).mean())),
            })
    print(json.dumps({"benchmark": "bits", "model": args.model, "split": args.split, "sentences": len(ids),
                      "latent_dim": vae.latent_dim, "rows": rows, "machine": machine()}))


if __name__ == "__main__":
    main()
