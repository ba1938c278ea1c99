"""Corpus figures for a config: per-split sizes, vocabulary, filtering counts and padding; prints one JSON line.

    python scripts/data_stats.py --config configs/ptb.yaml [--batch-size 64] [--data.max_length 50 ...]

target_tokens counts what the decoder predicts (words + <eos>, as in the PPL denominator).
padding_share_* is the share of padded target positions over one epoch of training batches,
length-bucketed (data.bucket_pool) and unbucketed (pool of one batch, i.e. random batches).
"""

from __future__ import annotations

import argparse
import json
import sys

from textvae.config import load_config
from textvae.data import load_corpus, make_loader, padding_share
from textvae.errors import UserError


def data_stats(config_path: str, overrides: list[str], batch_size: int | None) -> dict:
    config = load_config(config_path, overrides)
    corpus, tokenizer = load_corpus(config.data)
    batch_size = batch_size or config.data.batch_size
    train_ids = corpus["train"].ids

    def train_padding(pool: int) -> float:
        return padding_share(make_loader(train_ids, batch_size, shuffle=True, seed=config.seed, pool=pool))

    return {
        "config": config_path,
        "dataset": config.data.dataset,
        "tokenizer": config.data.tokenizer,
        "vocab_size": tokenizer.get_vocab_size(),
        "max_length": config.data.max_length,
        "batch_size": batch_size,
        "bucket_pool": config.data.bucket_pool,
        "splits": {
            name: {"sentences": len(split.ids), "target_tokens": sum(len(ids) - 1 for ids in split.ids),
                   "skipped_empty": split.skipped_empty, "truncated": split.truncated}
            for name, split in corpus.items()
        },
        "padding_share_bucketed": train_padding(config.data.bucket_pool),
        "padding_share_unbucketed": train_padding(1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config file (see configs/)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default: the config's)")
    args, overrides = parser.parse_known_args()
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    try:
        print(json.dumps(data_stats(args.config, overrides, args.batch_size)))
    except UserError as error:
        print(f"data_stats: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
