"""Tokenisation into the HF `datasets` cache: framed token ids per sentence, memory-mapped.

- Each split is tokenised once by a batched `map` keyed by the source's fingerprint, the
  tokenizer and `max_length`; later runs (and DDP ranks, behind a file lock) memory-map the same
  Arrow file, so memory does not grow with the corpus. Empty lines are skipped and counted;
  training sentences over `data.max_length` tokens are truncated and counted; validation and
  test keep full sentences.
- The tokenizer is trained on the training split only, once, and cached by the same kind of key.
- Every row also stores a 64-bit hash of its whole sentence's ids, from which `TokenIds.hash_set`
  builds the sorted set that novelty looks samples up in (evaluate.py).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from textvae.config import DataConfig
from textvae.data.sources import SPLITS, Source, _datasets, split_sources
from textvae.errors import UserError
from textvae.files import atomic_path
from textvae.tokenizer import Specials, encode_batch, frame, sentence_hash, special_ids, train_tokenizer

log = logging.getLogger("textvae")


class TokenIds(Sequence):
    """The framed token ids of one split, read from its memory-mapped Arrow table: nothing is held
    in Python lists, so memory does not grow with the corpus. Indexing gives a list of ints;
    `take(indices)` gives a batch's rows in one Arrow call."""

    def __init__(self, table):
        self.table = table.flatten_indices() if table._indices is not None else table
        self._column = self.table.data.column("ids")

    def __len__(self) -> int:
        return len(self._column)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.take(range(*index.indices(len(self))))
        return self._column[index].as_py()

    def __iter__(self):
        for chunk in self._column.chunks:
            yield from chunk.to_pylist()

    def take(self, indices) -> list[list[int]]:
        return self._column.take(list(indices)).to_pylist()

    def token_counts(self, vocab_size: int) -> np.ndarray:
        """How often each id occurs in the split, framing tokens included, one chunk at a time."""
        import pyarrow.compute as pc

        counts = np.zeros(vocab_size, dtype=np.int64)
        for chunk in self._column.chunks:
            counts += np.bincount(pc.list_flatten(chunk).to_numpy(), minlength=vocab_size)[:vocab_size]
        return counts

    def hash_set(self) -> np.ndarray:
        """The sorted distinct `sentence_hash`es of the split's sentences (their token ids before any
        truncation), computed once per tokenised table and memory-mapped from the cache after: every
        later run and `textvae evaluate` on the same data and tokenizer reuses the file, and a
        changed corpus or tokenizer gives another table fingerprint, so another file."""
        path = cache_root() / "hashes" / f"{_key(self.table._fingerprint, len(self))}.npy"
        if not path.is_file():
            hashes = np.unique(self.table.data.column("hash").to_numpy())  # sorted
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path, suffix=".npy") as tmp:
                np.save(tmp, hashes)
        return np.load(path, mmap_mode="r")

    def __getstate__(self):  # DataLoader workers get the table (pickled by file), not the column's data
        return {"table": self.table}

    def __setstate__(self, state):
        self.__init__(state["table"])


@dataclass
class Split:
    """One tokenised split: framed ids per sentence, their lengths, and what filtering did to it."""

    name: str
    path: str
    ids: Sequence  # TokenIds from the cache, or a list of framed id lists
    skipped_empty: int = 0
    truncated: int = 0
    lengths: np.ndarray = None  # framed lengths (words + <bos> + <eos>)

    def __post_init__(self):
        if self.lengths is None:
            self.lengths = framed_lengths(self.ids)


def framed_lengths(ids: Sequence) -> np.ndarray:
    """The length of each framed sentence, as one NumPy array."""
    return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))


CACHE_VERSION = "2"  # part of every cache key: bump when the tokenised layout changes


def _key(*parts) -> str:
    return hashlib.sha256("|".join(map(str, (CACHE_VERSION, *parts))).encode()).hexdigest()[:32]


def _tokenize_rows(batch: dict, column: str, tokenizer, specials: Specials, max_length: int | None) -> dict:
    texts = [text for text in batch[column] if isinstance(text, str) and text.strip()]
    words = encode_batch(tokenizer, texts, specials)
    ids = [frame(w, max_length, specials) for w in words]
    return {"ids": ids, "length": [len(x) for x in ids], "hash": [sentence_hash(w) for w in words],
            "truncated": [max_length is not None and len(w) > max_length for w in words]}


def tokenize_source(split: str, source: Source, tokenizer, max_length: int | None, limit: int | None = None,
                    num_proc: int = 0) -> Split:
    """Tokenise a split into the `datasets` cache with a batched `map` keyed by the source's
    fingerprint, the tokenizer and `max_length` (a second run memory-maps the same file); empty
    rows are dropped and counted, training rows over `max_length` are truncated and counted."""
    datasets = _datasets()
    table = source.table
    specials = special_ids(tokenizer)
    features = datasets.Features({"ids": datasets.Sequence(datasets.Value("int32")),
                                  "length": datasets.Value("int32"), "hash": datasets.Value("int64"),
                                  "truncated": datasets.Value("bool")})
    fingerprint = _key(table._fingerprint, source.column, _tokenizer_hash(tokenizer), tuple(specials), max_length)
    tokenized = table.map(_tokenize_rows, batched=True, batch_size=1000, remove_columns=table.column_names,
                          features=features, new_fingerprint=fingerprint, num_proc=num_proc or None,
                          fn_kwargs={"column": source.column, "tokenizer": tokenizer, "specials": specials,
                                     "max_length": max_length},
                          desc=f"tokenising {split}")
    skipped = len(table) - len(tokenized)
    if not len(tokenized):
        raise UserError(f"data: the {split} split ({source.name}) is empty after skipping empty lines")
    if limit is not None and limit < len(tokenized):
        tokenized = tokenized.select(range(limit))
    lengths = tokenized.data.column("length").to_numpy()
    truncated = int(np.count_nonzero(tokenized.data.column("truncated").to_numpy(zero_copy_only=False)))
    if skipped:
        log.info("data: skipped %d empty lines in %s", skipped, source.name)
    if truncated:
        log.warning("data: truncated %d of %d %s sentences to data.max_length=%d tokens",
                    truncated, len(tokenized), split, max_length)
    return Split(split, source.name, TokenIds(tokenized), skipped, truncated, lengths)


def _tokenizer_hash(tokenizer) -> str:
    return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()


def training_texts(source: Source, limit: int | None, sample: int | None) -> Iterator[str]:
    """The sentences the tokenizer learns from: the first `limit` non-empty training rows when
    `data.limit` is set, otherwise all rows, or `sample` of them drawn with seed 0 (in corpus order)."""
    table = source.table
    if limit is None and sample is not None and sample < len(table):
        table = table.select(np.sort(np.random.default_rng(0).choice(len(table), sample, replace=False)))
    seen = 0
    for batch in table.iter(batch_size=1000):
        for text in batch[source.column]:
            if isinstance(text, str) and text.strip():
                yield text
                seen += 1
                if limit is not None and seen >= limit:
                    return


def cached_tokenizer(source: Source, config: DataConfig):
    """The vocabulary learnt from the training source, trained once and then read from the cache
    (so DDP ranks and later runs share it)."""
    from tokenizers import Tokenizer

    key = _key(source.table._fingerprint, source.column, config.tokenizer, config.vocab_size, config.min_frequency,
               config.limit, config.tokenizer_sample)
    path = cache_root() / "tokenizers" / f"{key}.json"
    if path.is_file():
        return Tokenizer.from_file(str(path))
    tokenizer = train_tokenizer(training_texts(source, config.limit, config.tokenizer_sample), config.tokenizer,
                                config.vocab_size, config.min_frequency)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tokenizer.save(str(tmp))
    return tokenizer


def cache_root() -> Path:
    return Path(_datasets().config.HF_DATASETS_CACHE) / "textvae"


def load_corpus(config: DataConfig, tokenizer=None, splits=SPLITS):
    """Read and tokenise the splits through the `datasets` cache; trains the tokenizer on train
    when none is given. One process at a time builds a given cache (a file lock), so DDP ranks
    started together wait for the first one and then memory-map what it wrote."""
    from filelock import FileLock

    sources = split_sources(config, tuple(dict.fromkeys((*splits, *(() if tokenizer else ("train",))))))
    key = _key(*(sources[split].table._fingerprint for split in sorted(sources)))
    (cache_root() / "locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_root() / "locks" / f"{key}.lock")):
        if tokenizer is None:
            tokenizer = cached_tokenizer(sources["train"], config)
        corpus = {split: tokenize_source(split, sources[split], tokenizer,
                                         config.max_length if split == "train" else None, config.limit,
                                         config.num_workers)
                  for split in splits}
    return corpus, tokenizer
