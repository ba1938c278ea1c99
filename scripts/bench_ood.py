"""Out-of-domain detection over seeds: train a config once per seed, then report every anomaly
score's AUROC, AUPR and FPR@95 (textvae evaluate-ood) on in-domain vs out-of-domain lines; prints
one JSON line per seed and a last line with each score's mean and standard deviation over seeds.

    python scripts/bench_ood.py [--config configs/clinc150.yaml] [--seeds 0 1 2]
        [--in-domain data/clinc150/test.txt] [--out-of-domain data/clinc150/oos_test.txt]
        [--background unigram] [--iw-samples K] [--work runs/bench_ood] [TRAIN FLAGS ...]

Set-up for CLINC150: `python scripts/clinc150_text.py ../shared/data/clinc150/data_full.json
data/clinc150`. Flags the script does not know go to training (`--trainer.max_epochs 6`). Tune
on `--in-domain data/clinc150/valid.txt --out-of-domain data/clinc150/oos_valid.txt`; report test.
Each seed's run directory is WORK/seedN (replaced if present).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import textvae
from textvae.api import TextVAE
from textvae.benchmarking import machine
from textvae.cli import read_nonempty_lines
from textvae.config import load_config
from textvae.errors import run_script

METRICS = ("auroc", "aupr", "fpr95")


def summary(per_seed: list[dict]) -> dict:
    """Mean and standard deviation (over seeds, ddof 0) of each score's metrics."""
    out = {}
    for name in per_seed[0]:
        out[name] = {}
        for key in METRICS:
            values = np.array([seed[name][key] for seed in per_seed])
            out[name][key] = {"mean": float(values.mean()), "std": float(values.std())}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/clinc150.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--in-domain", default="data/clinc150/test.txt")
    parser.add_argument("--out-of-domain", default="data/clinc150/oos_test.txt")
    parser.add_argument("--background", default="unigram", help="for ratio: unigram, a textvae model, a HF causal LM")
    parser.add_argument("--iw-samples", type=int, default=None, help="K (default: the config's eval.iw_samples)")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_ood"))
    args, train_flags = parser.parse_known_args(argv)
    inside, outside = read_nonempty_lines(args.in_domain), read_nonempty_lines(args.out_of_domain)
    per_seed = []
    for seed in args.seeds:
        config = load_config(args.config, [*train_flags, "--seed", str(seed),
                                           "--output_dir", str(args.work / f"seed{seed}")])
        start = time.perf_counter()
        run_dir = textvae.train(config, overwrite=True)
        trained = time.perf_counter() - start
        vae = TextVAE.from_pretrained(run_dir)
        start = time.perf_counter()
        scores = vae.ood_metrics(inside, outside, iw_samples=args.iw_samples, background=args.background)
        per_seed.append(scores)
        print(json.dumps({"seed": seed, "train_seconds": trained, "score_seconds": time.perf_counter() - start,
                          "scores": scores}))
        sys.stdout.flush()
    print(json.dumps({"config": args.config, "train_flags": train_flags, "seeds": args.seeds,
                      "in_domain": args.in_domain, "out_of_domain": args.out_of_domain,
                      "background": args.background, "iw_samples": args.iw_samples or config.eval.iw_samples,
                      "summary": summary(per_seed), "machine": machine()}))


if __name__ == "__main__":
    run_script(main, "bench_ood")
