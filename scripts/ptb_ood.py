"""A PTB model against other text, with length taken out: writes four pairs of length-matched
files (in-domain vs out-of-domain) and, given a model, reports every anomaly score's AUROC, AUPR
and FPR@95 on each pair, and how the 95th-percentile flag rate on PTB test depends on length.

    python scripts/ptb_ood.py --model runs/ptb [--ptb data/ptb]
        [--wiki ../shared/data/clinc150/all_wiki_sents.txt] [--sets data/ptb_ood]
        [--iw-samples K] [--background unigram] [--seed 0] [--max-lines N] [--sets-only]

The pairs (SETS/NAME.in.txt vs SETS/NAME.out.txt):

- `wiki`: PTB test vs Wikipedia sentences in PTB's conventions (lowercase, punctuation-only tokens
  dropped, numbers as N), the same number of lines of each word count on both sides;
- `shuffled`: PTB test vs the same sentences with their words shuffled;
- `random20`: PTB test vs the same sentences with 20% of their words (at least one) replaced by
  words drawn uniformly from the training vocabulary;
- `valid`: PTB test vs PTB valid, length-matched: the control, where every AUROC should be 0.5.

`length_bias`: each score's flag rate on the shortest and the longest quarter of PTB test (lines
ranked by word count) at the score's 95th validation percentile, and the larger over the smaller.
`--max-lines N` keeps N random pairs of each set (a quicker look). `--sets-only` writes the files
and stops (then `textvae evaluate-ood --in-domain SETS/wiki.in.txt --out-of-domain
SETS/wiki.out.txt` scores one pair). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from textvae.anomaly import SCORES, detection_metrics
from textvae.cli import read_nonempty_lines
from textvae.errors import UserError, run_script
from textvae.files import atomic_write_text

NUMBER = re.compile(r"^[+-]?[\d.,:/]*\d[\d.,:/]*$")  # 1987, 3.5, 1,000, 9/11, 12:30
SYMBOLS = {"$", "&", "#"}  # the symbols PTB keeps as words; % is N there too (5 % -> N N)
REPLACED = 0.2


def read_lines(path: Path) -> list[str]:
    """The file's non-empty lines, whitespace runs collapsed."""
    return [" ".join(line.split()) for line in read_nonempty_lines(str(path))]


def ptb_conventions(line: str) -> str:
    """A sentence as Mikolov's PTB writes it: lowercase, numbers and % as N, punctuation-only
    tokens dropped except $, & and #."""
    words = []
    for word in line.lower().split():
        number, percent = (word[:-1], True) if word.endswith("%") else (word, False)
        if NUMBER.match(number):
            words.append("N")
        elif number and (number in SYMBOLS or any(c.isalnum() for c in number)):
            words.append(number)
        if percent:
            words.append("N")
    return " ".join(words)


def length_matched(first: list[str], second: list[str], seed: int) -> tuple[list[str], list[str]]:
    """For every word count, as many lines of each side as the scarcer side has, drawn at random."""
    by_length = [defaultdict(list), defaultdict(list)]
    for side, lines in zip(by_length, (first, second)):
        for line in lines:
            side[len(line.split())].append(line)
    rng = random.Random(seed)
    kept = ([], [])
    for length in sorted(set(by_length[0]) & set(by_length[1])):
        count = min(len(by_length[0][length]), len(by_length[1][length]))
        for side, out in zip(by_length, kept):
            out.extend(rng.sample(side[length], count))
    return kept


def shuffled(lines: list[str], seed: int) -> tuple[list[str], list[str]]:
    """Each line and its words in another order; lines no order changes (one word, all alike) go."""
    rng = random.Random(seed)
    kept, changed = [], []
    for line in lines:
        words = line.split()
        if len(set(words)) < 2:
            continue
        other = words[:]
        while other == words:
            rng.shuffle(other)
        kept.append(line)
        changed.append(" ".join(other))
    return kept, changed


def replaced(lines: list[str], vocabulary: list[str], seed: int,
             share: float = REPLACED) -> tuple[list[str], list[str]]:
    """Each line with round(share x words) of its words (at least one) swapped for other words
    drawn uniformly from `vocabulary`."""
    rng = random.Random(seed)
    changed = []
    for line in lines:
        words = line.split()
        for position in rng.sample(range(len(words)), max(1, round(share * len(words)))):
            word = words[position]
            while word == words[position]:
                word = rng.choice(vocabulary)
            words[position] = word
        changed.append(" ".join(words))
    return lines, changed


def build_sets(ptb: Path, wiki: Path, seed: int) -> dict[str, tuple[list[str], list[str]]]:
    test, valid = read_lines(ptb / "ptb.test.txt"), read_lines(ptb / "ptb.valid.txt")
    vocabulary = sorted({word for line in read_lines(ptb / "ptb.train.txt") for word in line.split()} - {"<unk>"})
    other = [line for line in map(ptb_conventions, read_lines(wiki)) if line]
    return {"wiki": length_matched(test, other, seed),
            "shuffled": shuffled(test, seed),
            "random20": replaced(test, vocabulary, seed),
            "valid": length_matched(test, valid, seed)}


def at_most(sets: dict[str, tuple[list[str], list[str]]], lines: int | None, seed: int) -> dict:
    """At most `lines` pairs of each set, drawn at random; the i-th lines of both sides go
    together, so length matching and pairing survive."""
    if lines is None:
        return sets
    rng = random.Random(seed)
    kept = {}
    for name, (inside, outside) in sets.items():
        rows = sorted(rng.sample(range(len(inside)), min(lines, len(inside))))
        kept[name] = ([inside[i] for i in rows], [outside[i] for i in rows])
    return kept


def write_sets(sets: dict[str, tuple[list[str], list[str]]], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (inside, outside) in sets.items():
        atomic_write_text(folder / f"{name}.in.txt", "\n".join(inside) + "\n")
        atomic_write_text(folder / f"{name}.out.txt", "\n".join(outside) + "\n")


def flag_rates_by_length(scores: np.ndarray, lengths: np.ndarray, threshold: float) -> dict[str, float]:
    """Share of lines above `threshold` in the shortest and the longest quarter of the lines
    (ranked by length, ties kept in file order), and the larger share over the smaller (None
    where only one quarter has flagged lines)."""
    order = np.argsort(lengths, kind="stable")
    quarter = len(order) // 4
    shortest = float((scores[order[:quarter]] > threshold).mean())
    longest = float((scores[order[-quarter:]] > threshold).mean())
    low, high = sorted((shortest, longest))
    return {"threshold": threshold, "shortest": shortest, "longest": longest,
            "ratio": high / low if low > 0 else (1.0 if high == 0 else None)}


def evaluate(vae, sets: dict, names: list[str], iw_samples: int | None, background: str | None, seed: int) -> dict:
    """Scores every distinct line once, then each pair's detection metrics and the length bias."""
    lines = sorted({line for pair in sets.values() for side in pair for line in side})
    scores = vae.score(lines, iw_samples=iw_samples, seed=seed, by=names, background=background)
    index = {line: i for i, line in enumerate(lines)}
    values = {name: scores[name].numpy() for name in names}
    results = {}
    for name, (inside, outside) in sets.items():
        rows = [np.array([index[line] for line in side]) for side in (inside, outside)]
        results[name] = {"lines": [len(inside), len(outside)],
                         "mean_words": [float(np.mean([len(line.split()) for line in side]))
                                        for side in (inside, outside)],
                         "scores": {score: detection_metrics(values[score][rows[0]], values[score][rows[1]])
                                    for score in names}}
    test = sets["random20"][0]  # PTB test (or --max-lines of it)
    rows = np.array([index[line] for line in test])
    lengths = np.array([len(line.split()) for line in test])
    bias = {score: flag_rates_by_length(values[score][rows], lengths,
                                        vae.anomaly_threshold(95, by=score, background=background))
            for score in names if score != "length"}
    return {"sets": results, "length_bias": bias}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a trained PTB model (run or model directory)")
    parser.add_argument("--ptb", type=Path, default=Path("data/ptb"))
    parser.add_argument("--wiki", type=Path, default=Path("../shared/data/clinc150/all_wiki_sents.txt"))
    parser.add_argument("--sets", type=Path, default=Path("data/ptb_ood"), help="where the pairs are written")
    parser.add_argument("--iw-samples", type=int, default=None, help="K (default: the model's stored K)")
    parser.add_argument("--background", default="unigram", help="for ratio: unigram, a textvae model, a HF causal LM")
    parser.add_argument("--seed", type=int, default=0, help="seeds the sets and the importance samples")
    parser.add_argument("--max-lines", type=int, default=None, help="at most N lines per side of each pair")
    parser.add_argument("--sets-only", action="store_true", help="write the pairs and stop")
    args = parser.parse_args(argv)
    if not args.sets_only and not args.model:
        raise UserError("--model is required (or --sets-only)")
    if args.max_lines is not None and args.max_lines < 1:
        raise UserError(f"--max-lines must be at least 1, got {args.max_lines}")
    sets = at_most(build_sets(args.ptb, args.wiki, args.seed), args.max_lines, args.seed)
    write_sets(sets, args.sets)
    if args.sets_only:
        print(json.dumps({"sets": {name: [len(inside), len(outside)] for name, (inside, outside) in sets.items()},
                          "folder": str(args.sets)}))
        return
    from textvae.api import TextVAE
    from textvae.benchmarking import machine

    vae = TextVAE.from_pretrained(args.model)
    start = time.perf_counter()
    report = evaluate(vae, sets, list(SCORES), args.iw_samples, args.background, args.seed)
    print(json.dumps({"model": args.model, "max_lines": args.max_lines,
                      "iw_samples": args.iw_samples or vae.default_iw_samples, "background": args.background,
                      "seed": args.seed, **report,
                      "seconds": time.perf_counter() - start, "machine": machine()}))


if __name__ == "__main__":
    run_script(main, "ptb_ood")
