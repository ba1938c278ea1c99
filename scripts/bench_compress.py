"""Bits-back compression against the standard compressors, measured in the same run; one JSON line.

    python scripts/bench_compress.py --model runs/ptb [--raw FILE] [--lanes 64] [--parts 2] [--device cpu]

For PTB test and one raw-text file (default: the GPL-3 text in /usr/share/common-licenses):
size, bits per character (Unicode characters) and per whitespace word, gzip -9, bzip2 -9,
xz -9e and zstd -19 on the same bytes, compress and decompress throughput (KB = 1000 bytes of
input text), and whether the round trip was exact. For the lines that take the model path it
also gives the model's negative ELBO in bits (rec with one z ~ q(z|x) plus the analytic KL,
summed over those lines) and how far the stream is above it, split into the header, the
start-up (the lines coded with z = 0 and no bits back while the stack was too short to pay for
their codes: -log p(x|0) minus their ELBO) and the rest (latent discretisation, flags,
constriction's fixed-point probabilities and the one-sample noise of the ELBO estimate).
A file of at least 4 x lanes lines per part is coded as --parts independent parts in parallel
threads, each making single-threaded torch calls (compress.py); the header share counts every
part's header. --device (default auto) is where the model runs, and a stream decompresses only
on the same kind.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import json
import lzma
import math
import shutil
import subprocess
import time
from pathlib import Path

import torch

from textvae.benchmarking import device_arg, machine
from textvae.api import TextVAE
from textvae.compress import HEADER_SIZE, classify, compress_with_startup, fingerprint, parts_of, split_lines
from textvae.evaluate import score_ids
from textvae.tokenizer import frame, pad_batch


def zstd_size(raw: bytes) -> tuple[int | None, str]:
    try:
        import zstandard

        return len(zstandard.ZstdCompressor(level=19).compress(raw)), f"zstandard {zstandard.__version__}"
    except ImportError:
        pass
    if shutil.which("zstd"):
        out = subprocess.run(["zstd", "-19", "-c"], input=raw, capture_output=True, check=True).stdout
        return len(out), "zstd command"
    return None, "zstd unavailable (no zstandard package, no zstd command)"


@torch.no_grad()
def model_line_costs(vae: TextVAE, text: str, unpaid: list[int]) -> dict:
    """Negative ELBO (bits) of the model-path lines, and the start-up cost over it: the lines the
    coder sent with z = 0 and no bits back (`unpaid`) cost -log p(x|z=0) instead of their ELBO."""
    lines, _ = split_lines(text)
    flags, tokens = classify(vae, lines)
    ids = [frame(t) for t in tokens if t is not None]
    if not ids:
        return {"model_lines": 0, "escaped_lines": len(lines)}
    scores = score_ids(vae, ids, iw_samples=1, seed=0)
    elbo = scores.rec + scores.kl  # (N,) nats
    model_index = {line: index for index, line in enumerate(i for i, f in enumerate(flags) if f)}
    at_zero = [model_index[line] for line in unpaid]
    startup = 0.0
    if at_zero:
        batch = pad_batch([ids[i] for i in at_zero]).to(vae.device)
        rec_at_zero = vae.model.reconstruction_nll(batch, torch.zeros(len(at_zero), vae.latent_dim, device=vae.device))
        startup = float((rec_at_zero - elbo[at_zero]).sum())
    return {"model_lines": len(ids), "escaped_lines": len(lines) - len(ids), "lines_at_zero": len(at_zero),
            "elbo_bits": float(elbo.sum()) / math.log(2), "elbo_nats_per_line": float(elbo.mean()),
            "startup_bits": startup / math.log(2)}


def measure(vae: TextVAE, path: Path, lanes: int, parts: int) -> dict:
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    start = time.perf_counter()
    data, unpaid = compress_with_startup(vae, text, lanes, parts)
    compress_s = time.perf_counter() - start
    start = time.perf_counter()
    restored = vae.decompress(data)
    decompress_s = time.perf_counter() - start
    bits = 8 * len(data)
    result = {"file": str(path), "bytes": len(raw), "characters": len(text), "words": len(text.split()),
              "compressed_bytes": len(data), "bits_per_char": bits / len(text), "bits_per_word": bits / len(text.split()),
              "compress_kb_s": len(raw) / 1000 / compress_s, "decompress_kb_s": len(raw) / 1000 / decompress_s,
              "exact": restored == text, "parts": parts_of(data)}
    costs = model_line_costs(vae, text, unpaid)
    result.update(costs)
    if costs.get("escaped_lines") == 0:
        header = 8 * HEADER_SIZE * result["parts"]
        result["overhead_percent"] = 100 * (bits - costs["elbo_bits"]) / costs["elbo_bits"]
        result["overhead_split_percent"] = {
            "header": 100 * header / costs["elbo_bits"], "lane_startup": 100 * costs["startup_bits"] / costs["elbo_bits"],
            "rest": 100 * (bits - header - costs["startup_bits"] - costs["elbo_bits"]) / costs["elbo_bits"]}
    baselines = {"gzip_9": len(gzip.compress(raw, 9, mtime=0)), "bzip2_9": len(bz2.compress(raw, 9)),
                 "xz_9e": len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))}
    baselines["zstd_19"], result["zstd_note"] = zstd_size(raw)
    result["baselines_bits_per_char"] = {name: None if size is None else 8 * size / len(text)
                                         for name, size in baselines.items()}
    result["vs_bzip2"] = baselines["bzip2_9"] / len(data)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/latest", help="model or run directory")
    parser.add_argument("--ptb", default="data/ptb/ptb.test.txt", help="PTB test file")
    parser.add_argument("--raw", default="/usr/share/common-licenses/GPL-3", help="a raw-text file")
    parser.add_argument("--lanes", type=int, default=64, help="lines coded in lockstep")
    parser.add_argument("--parts", type=int, default=2, help="independent parts coded in parallel threads")
    parser.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda, cuda:N or mps")
    args = parser.parse_args()
    vae = TextVAE.from_pretrained(args.model, device=args.device)
    model_dir = Path(args.model)
    run_json = model_dir / "run.json" if (model_dir / "run.json").is_file() else model_dir.parent / "run.json"
    report = {"benchmark": "compress", "model": str(model_dir), "fingerprint": fingerprint(vae).hex()[:16],
              "decoder": vae.config.model.decoder.type, "latent_dim": vae.latent_dim, "lanes": args.lanes,
              "parts": args.parts, "device": str(vae.device),
              "run": json.loads(run_json.read_text()) if run_json.is_file() else None,
              "ptb_test": measure(vae, Path(args.ptb), args.lanes, args.parts),
              "raw": measure(vae, Path(args.raw), args.lanes, args.parts),
              "machine": machine()}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
