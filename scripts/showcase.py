"""What the latent does, side by side: prior samples, test reconstructions and interpolation paths
from one or more trained models, on the same test sentences and seeds.

    python scripts/showcase.py --model GRU=runs/ptb --model SmolLM2=runs/ptb_smollm2 \
        [--test data/ptb/ptb.test.txt] [--samples 20] [--top-p 0.9] [--sentences 10] [--paths 3]
        [--steps 5] [--words 8 20] [--seed 0] [--device auto]

The test sentences are `--sentences` lines of the test file with a word count within `--words`,
evenly spaced through it (the same for every model); the interpolation paths join the first
2 x `--paths` of them in pairs (1st to 2nd, 3rd to 4th, ...), `--steps` points between the two
codes plus the endpoints, slerp. Reconstructions and paths decode greedily from the posterior
mean; samples draw z ~ N(0, I) and decode with nucleus sampling (`--top-p`), seeded. Prints one
JSON object; docs/results/ptb_showcase.json keeps the docs' copy, which
`scripts/results_tables.py` renders as tables.
"""

from __future__ import annotations

import argparse
import json
import time

from textvae.cli import read_nonempty_lines
from textvae.errors import UserError, run_script


def chosen_sentences(lines: list[str], count: int, words: tuple[int, int]) -> list[str]:
    """`count` lines with a word count in [words[0], words[1]], evenly spaced through `lines`."""
    fitting = [" ".join(line.split()) for line in lines if words[0] <= len(line.split()) <= words[1]]
    if len(fitting) < count:
        raise UserError(f"only {len(fitting)} test lines have {words[0]}-{words[1]} words; {count} are needed")
    return [fitting[i * len(fitting) // count] for i in range(count)]


def parse_models(specs: list[str]) -> dict[str, str]:
    models = {}
    for spec in specs:
        name, sep, directory = spec.partition("=")
        if not sep or not name or not directory:
            raise UserError(f"--model must be NAME=DIR, got {spec!r}")
        if name in models:
            raise UserError(f"--model: the name {name!r} is given twice")
        models[name] = directory
    return models


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="NAME=DIR, once per model")
    parser.add_argument("--test", default="data/ptb/ptb.test.txt")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--sentences", type=int, default=10)
    parser.add_argument("--paths", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--words", type=int, nargs=2, default=(8, 20), metavar=("MIN", "MAX"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    models = parse_models(args.model)
    if not models:
        raise UserError("--model NAME=DIR is required (once per model)")
    for flag, value in (("--samples", args.samples), ("--sentences", args.sentences), ("--steps", args.steps)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if not 0 <= args.paths <= args.sentences // 2:
        raise UserError(f"--paths must be between 0 and --sentences / 2 = {args.sentences // 2}, got {args.paths}")
    sentences = chosen_sentences(read_nonempty_lines(args.test), args.sentences, tuple(args.words))
    pairs = [(sentences[2 * i], sentences[2 * i + 1]) for i in range(args.paths)]

    from textvae.api import TextVAE
    from textvae.benchmarking import machine

    start = time.perf_counter()
    report = {"test_file": args.test, "seed": args.seed, "top_p": args.top_p, "steps": args.steps,
              "sentences": sentences, "pairs": [list(pair) for pair in pairs], "models": {}}
    for name, directory in models.items():
        vae = TextVAE.from_pretrained(directory, device=args.device)
        report["models"][name] = {
            "model": directory,
            "samples": vae.sample(args.samples, seed=args.seed, top_p=args.top_p),
            "reconstructions": vae.reconstruct(sentences),
            "interpolations": [vae.interpolate(a, b, steps=args.steps) for a, b in pairs],
        }
    report.update(seconds=time.perf_counter() - start, machine=machine())
    print(json.dumps(report))


if __name__ == "__main__":
    run_script(main, "showcase")
