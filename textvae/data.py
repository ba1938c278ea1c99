"""Corpora, tokenisation and length-bucketed batches (no Lightning: system.py wraps them in a
`LightningDataModule`, so evaluation and the API can load data without it).

- PTB (`data.dataset: ptb`): Mikolov's three files in `data.root`, MD5-verified; when absent
  they are downloaded once from `data.download_url` (the original simple-examples archive)
  into a temporary directory and moved into place, so a broken download leaves nothing behind.
- Text files (`data.dataset: text`): one UTF-8 sentence per line. Files are first streamed
  line by line through `utf8_lines` (which also checks the CLI's input files) so that a bad
  byte is reported with its line number, then read and tokenised through HF `datasets`
  (cached between runs).
- Empty lines are skipped and counted; training sentences over `data.max_length` tokens are
  truncated and counted; validation and test keep full sentences.
- `BucketBatchSampler` groups sentences of similar length (padding ~1% instead of ~40%) and
  shards whole batches across DDP ranks itself, so Lightning's distributed-sampler
  replacement is switched off (`use_distributed_sampler=False` in training.py).
"""

from __future__ import annotations

import codecs
import functools
import gzip
import hashlib
import http.client
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from collections.abc import Sequence
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

import torch
from torch.utils.data import DataLoader, Sampler

from textvae.config import DataConfig
from textvae.errors import UserError
from textvae.files import atomic_path
from textvae.tokenizer import (PAD_ID, Specials, encode_batch, frame, pad_batch, sentence_hash, special_ids,
                               train_tokenizer)

log = logging.getLogger("textvae")

SPLITS = ("train", "valid", "test")
PTB_MD5 = {
    "train": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "valid": "aa0affc06ff7c36e977d7cd49e3839bf",
    "test": "8b80168b89c18661a38ef683c0dc3721",
}


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, destination: Path) -> None:
    from tqdm.auto import tqdm

    with urllib.request.urlopen(url, timeout=60) as response, open(destination, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc="downloading PTB",
                  disable=not sys.stderr.isatty()) as bar:
            for block in iter(lambda: response.read(1 << 16), b""):
                out.write(block)
                bar.update(len(block))


def download_ptb(root: Path, url: str) -> None:
    """Fetch Mikolov's archive, verify the three files and move them into `root` atomically."""
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        archive = Path(tmp) / "ptb.tgz"
        try:
            _download(url, archive)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise UserError(
                f"data: PTB is not in {root} and downloading {url} failed ({reason}); put ptb.train.txt, "
                f"ptb.valid.txt and ptb.test.txt in {root} (scripts/get_data.sh links them from ../shared/data/ptb)"
            ) from None
        try:
            with tarfile.open(archive) as tar:
                members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                for split in SPLITS:
                    name = f"ptb.{split}.txt"
                    if name not in members:
                        raise UserError(f"data: the archive at {url} has no {name}")
                    with tar.extractfile(members[name]) as source, open(Path(tmp) / name, "wb") as target:
                        shutil.copyfileobj(source, target)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
            reason = str(error).splitlines()[0].rstrip(":")
            raise UserError(f"data: the download from {url} is not a valid archive ({reason})") from None
        for split in SPLITS:
            got = md5sum(Path(tmp) / f"ptb.{split}.txt")
            if got != PTB_MD5[split]:
                raise UserError(f"data: downloaded ptb.{split}.txt has MD5 {got}, expected {PTB_MD5[split]}")
        for split in SPLITS:
            os.replace(Path(tmp) / f"ptb.{split}.txt", root / f"ptb.{split}.txt")


def ptb_files(root: Path, url: str) -> dict[str, Path]:
    """The verified PTB split files, downloading them first if none are present."""
    paths = {split: root / f"ptb.{split}.txt" for split in SPLITS}
    if not any(path.exists() for path in paths.values()):
        download_ptb(root, url)
    for split, path in paths.items():
        if not path.is_file():
            raise UserError(f"data: {path} is missing (the other PTB files are in {root}); copy all three there")
        got = md5sum(path)
        if got != PTB_MD5[split]:
            raise UserError(f"data: {path} has MD5 {got}, expected {PTB_MD5[split]} (corrupted or not Mikolov's PTB;"
                            f" delete it to download it again)")
    return paths


def split_files(config: DataConfig) -> dict[str, Path]:
    if config.dataset == "ptb":
        return ptb_files(Path(config.root), config.download_url)
    files = {"train": config.train_file, "valid": config.valid_file, "test": config.test_file}
    missing = [f"data.{split}_file" for split, path in files.items() if path is None]
    if missing:
        raise UserError(f"config: data.dataset is 'text' but {', '.join(missing)} is not set")
    return {split: Path(path) for split, path in files.items()}


def utf8_lines(lines: Iterable[bytes], name: str) -> Iterator[str]:
    """Decode raw lines (a file opened in binary, or sys.stdin.buffer) one at a time, so memory
    does not grow with the input; the first undecodable byte fails naming `name` and its line."""
    for number, raw in enumerate(lines, 1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise UserError(f"{name} line {number} is not valid UTF-8 (byte {raw[error.start]:#04x})") from None


def check_text_file(path: Path) -> None:
    """Fail with the file and line of the first problem: missing, empty, not UTF-8. The file is
    decoded in blocks of 4 MiB, so memory stays flat and a corpus of gigabytes takes seconds."""
    if not path.is_file():
        raise UserError(f"data: file not found: {path}")
    decoder = codecs.getincrementaldecoder("utf-8")()
    blank = True
    with open(path, "rb") as handle:
        try:
            for block in iter(lambda: handle.read(1 << 22), b""):
                text = decoder.decode(block)
                blank = blank and not text.strip()
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:  # rare: find the line again, one line at a time
            handle.seek(0)
            for _ in utf8_lines(handle, f"data: {path}"):
                pass
            raise UserError(f"data: {path} ends inside a UTF-8 character (last line)") from None
    if blank:
        raise UserError(f"data: {path} is empty")


def _datasets():
    import datasets

    datasets.utils.logging.set_verbosity_error()
    if not sys.stderr.isatty():
        datasets.disable_progress_bars()
    return datasets


@dataclass
class Source:
    """One split's raw sentences: an Arrow-backed `datasets.Dataset` (memory-mapped from the HF
    datasets cache), the column that holds them, and a name for messages."""

    table: object
    column: str
    name: str


def text_source(path: Path) -> Source:
    """A file of one sentence per line, through `datasets`' text loader (Arrow-cached)."""
    check_text_file(path)
    table = _datasets().load_dataset("text", data_files=str(path.resolve()), split="train")
    return Source(table, "text", str(path))


HF_FILE_LOADERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".txt": "text"}


def _load_hf(config: DataConfig):
    """What `data.path` names, as a DatasetDict (or a Dataset for a single-split save_to_disk folder)."""
    datasets = _datasets()
    path, local = config.path, Path(config.path).expanduser()
    try:
        if local.is_dir() and any((local / marker).is_file() for marker in ("dataset_dict.json", "state.json")):
            return datasets.load_from_disk(str(local))
        if local.is_file():
            loader = HF_FILE_LOADERS.get(local.suffix.lower())
            if loader is None:
                raise UserError(f"data: data.path {path} is a file datasets cannot read "
                                f"(use {', '.join(HF_FILE_LOADERS)})")
            return datasets.load_dataset(loader, data_files=str(local.resolve()))
        return datasets.load_dataset(path, config.name, data_files=config.data_files)
    except UserError:
        raise
    except Exception as error:  # datasets raises many kinds: no network, no such dataset, bad files
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        hint = "" if local.exists() else "; offline, pass a local directory, save_to_disk folder or data file as data.path"
        raise UserError(f"data: cannot load data.path {path!r} with HF datasets ({reason}){hint}") from None


def hf_sources(config: DataConfig, splits=SPLITS) -> dict[str, Source]:
    """`data.dataset: hf`: the train/valid/test sources that `data.splits` names; a valid or test
    split the dataset lacks is carved from train (`data.holdout` sentences each, seed 0)."""
    loaded = _load_hf(config)
    available = {"train": loaded} if not hasattr(loaded, "keys") else dict(loaded)
    names = {"train": config.splits.train, "valid": config.splits.valid, "test": config.splits.test}
    if names["train"] not in available:
        raise UserError(f"data: {config.path} has no split {names['train']!r} (data.splits.train); "
                        f"it has {', '.join(map(repr, available))}")
    train = available[names["train"]]
    carve = [split for split in ("valid", "test") if names[split] not in available]
    sources = {}
    if carve:
        needed = config.holdout * len(carve)
        if needed >= len(train):
            raise UserError(f"data: {config.path} split {names['train']!r} has {len(train)} rows, too few to carve "
                            f"{needed} for {' and '.join(carve)} (data.holdout={config.holdout})")
        held = np.sort(np.random.default_rng(0).choice(len(train), needed, replace=False))
        keep = np.ones(len(train), dtype=bool)
        keep[held] = False
        for position, split in enumerate(carve):
            part = held[position * config.holdout: (position + 1) * config.holdout]
            sources[split] = Source(train.select(part), config.text_column,
                                    f"{config.path} ({config.holdout} rows carved from {names['train']!r})")
            log.info("data: %s has no %s split (%r); carved %d rows from %r with seed 0", config.path, split,
                     names[split], config.holdout, names["train"])
        train = train.select(np.flatnonzero(keep))
    sources["train"] = Source(train, config.text_column, f"{config.path} split {names['train']!r}")
    for split in ("valid", "test"):
        if split not in sources:
            sources[split] = Source(available[names[split]], config.text_column, f"{config.path} split {names[split]!r}")
    for source in sources.values():
        feature = source.table.features.get(source.column)
        if feature is None:
            raise UserError(f"data: {source.name} has no column {source.column!r} (data.text_column); "
                            f"its columns are {', '.join(map(repr, source.table.column_names))}")
        if getattr(feature, "dtype", None) not in ("string", "large_string"):
            raise UserError(f"data: column {source.column!r} of {source.name} holds {feature}, not text")
    return {split: sources[split] for split in splits}


def split_sources(config: DataConfig, splits=SPLITS) -> dict[str, Source]:
    if config.dataset == "hf":
        return hf_sources(config, splits)
    files = split_files(config)
    return {split: text_source(files[split]) for split in splits}


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


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length sentences, sharded by whole batches across `num_replicas` ranks.

    Each epoch: shuffle all indices with `seed + epoch`, sort pools of `pool` batches by length,
    cut them into batches and shuffle the batch order. Every rank builds the same batch list and
    takes every `num_replicas`-th batch, so shards are disjoint and cover every sentence exactly
    once; to give each rank the same number of steps (DDP would hang otherwise) the largest
    batches are halved until the count divides evenly. Without shuffling, all sentences are
    sorted by length (evaluation).

    The sampler counts the batches it hands out, so `state_dict()` says where the current pass
    stands and `load_state_dict()` makes the next pass over that epoch skip what was trained on.
    """

    def __init__(self, lengths, batch_size: int, shuffle: bool = True, seed: int = 0,
                 pool: int = 100, num_replicas: int = 1, rank: int = 0):
        if len(lengths) < num_replicas:
            raise UserError(f"data: {len(lengths)} sentences cannot be split across {num_replicas} devices")
        self.lengths = torch.tensor(np.asarray(lengths), dtype=torch.int64)  # a copy: `lengths` may be read-only
        self.batch_size, self.shuffle, self.seed, self.pool = batch_size, shuffle, seed, pool
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        # Lightning calls set_epoch on `dataloader.batch_sampler.sampler`; point it here.
        self.sampler = self
        # Halving the largest batch until the count divides evenly adds one batch each time, which
        # works while there are fewer batches than sentences.
        batches = len(self._spans(len(lengths)))
        self._length = batches + (-batches) % num_replicas
        if self._length > len(lengths):
            raise UserError(f"data: {len(lengths)} sentences in batches of 1 cannot be split evenly across "
                            f"{num_replicas} devices; use a larger data.batch_size")
        self.skipped = 0  # batches of this pass skipped on resume (already trained on)
        self.yielded = 0  # batches of this pass handed out so far
        self._resume_at: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.skipped, self.yielded = epoch, 0, 0

    def state_dict(self) -> dict:
        """The current pass's epoch and the batches of it already handed out (or skipped)."""
        return {"epoch": self.epoch, "batches": self.skipped + self.yielded}

    def load_state_dict(self, state: dict) -> None:
        """Make the next pass over `state["epoch"]` start after its first `state["batches"]` batches."""
        self._resume_at = (int(state["epoch"]), int(state["batches"]))

    def _pool_size(self, count: int) -> int:
        return self.batch_size * self.pool if self.shuffle else count

    def _spans(self, count: int) -> list[tuple[int, int]]:
        """(start, end) of each batch in the pool-sorted order, before shuffling: pools of
        `batch_size * pool` sentences (one pool without shuffling) cut into batches."""
        pool_size = self._pool_size(count)
        return [(start, min(start + self.batch_size, pool_end))
                for pool_start in range(0, count, pool_size)
                for pool_end in (min(pool_start + pool_size, count),)
                for start in range(pool_start, pool_end, self.batch_size)]

    def _all_batches(self) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """This epoch's sentence order and its batches as spans of it. Vectorised: one stable
        sort by (pool, length) instead of a sort per pool, and spans instead of tensors, so that
        millions of sentences take a fraction of a second."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        count = len(self.lengths)
        order = torch.randperm(count, generator=generator) if self.shuffle else torch.arange(count)
        key = torch.arange(count) // self._pool_size(count) * (int(self.lengths.max()) + 1) + self.lengths[order]
        order = order[torch.argsort(key, stable=True)]
        spans = self._spans(count)
        if self.shuffle:
            spans = [spans[i] for i in torch.randperm(len(spans), generator=generator).tolist()]
        while len(spans) % self.num_replicas:
            largest = max(range(len(spans)), key=lambda i: spans[i][1] - spans[i][0])
            start, end = spans[largest]
            if end - start == 1:
                raise UserError(f"data: {count} sentences in batches of 1 cannot be split evenly across "
                                f"{self.num_replicas} devices; use a larger data.batch_size")
            half = start + (end - start) // 2
            spans[largest: largest + 1] = [(start, half), (half, end)]
        return order, spans

    def __iter__(self):
        # A generator, so the batch list is built at the first batch, after Lightning's set_epoch.
        order, spans = self._all_batches()
        spans = spans[self.rank:: self.num_replicas]
        if self._resume_at is not None:
            epoch, done = self._resume_at
            self._resume_at, self.skipped = None, done if epoch == self.epoch else 0
        self.yielded = 0
        for start, end in spans[self.skipped:]:
            self.yielded += 1
            yield order[start:end].tolist()

    def __len__(self) -> int:
        return self._length // self.num_replicas


def collate(batch: list[tuple[int, list[int]]], pad_id: int = PAD_ID) -> dict[str, torch.Tensor]:
    """Pad framed sentences to the batch maximum; keep their corpus indices."""
    indices, sequences = zip(*batch)
    return {"tokens": pad_batch(sequences, pad_id), "index": torch.tensor(indices)}


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, ids: Sequence):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        return index, self.ids[index]

    def __getitems__(self, indices: list[int]):  # the DataLoader fetches a whole batch in one call
        rows = self.ids.take(indices) if isinstance(self.ids, TokenIds) else [self.ids[i] for i in indices]
        return list(zip(indices, rows))


class ResumableLoader(DataLoader):
    """A DataLoader over a `BucketBatchSampler` whose place in the epoch survives a checkpoint.

    Lightning treats a loader with `state_dict`/`load_state_dict` as stateful (it does not look
    at the sampler): it stores the state in every checkpoint and loads it on resume, so a run
    resumed mid-epoch trains on the rest of that epoch's batches instead of starting the epoch's
    order again. The state is the sampler's, except that the loader counts the batches it has
    delivered itself: with workers, the DataLoader draws batches from the sampler ahead of use.
    """

    delivered = 0  # batches of the current pass handed to the training loop

    def __iter__(self):
        self.delivered = 0
        return self._count(super().__iter__())

    def _count(self, batches):
        for batch in batches:
            self.delivered += 1
            yield batch

    def state_dict(self) -> dict:
        return {**self.batch_sampler.state_dict(), "batches": self.batch_sampler.skipped + self.delivered}

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.load_state_dict(state)


def make_loader(ids: Sequence, batch_size: int, shuffle: bool, seed: int = 0, pool: int = 100,
                num_replicas: int = 1, rank: int = 0, num_workers: int = 0, pad_id: int = PAD_ID,
                lengths: np.ndarray | None = None) -> ResumableLoader:
    """Bucketed batches of framed `ids` (lists, or a split's memory-mapped TokenIds with its `lengths`)."""
    if lengths is None:
        lengths = framed_lengths(ids)
    sampler = BucketBatchSampler(lengths, batch_size, shuffle, seed, pool, num_replicas, rank)
    return ResumableLoader(_Indexed(ids), batch_sampler=sampler, collate_fn=functools.partial(collate, pad_id=pad_id),
                           num_workers=num_workers, persistent_workers=num_workers > 0)


def padding_share(loader: DataLoader) -> float:
    """Share of predicted positions (all but <bos>) in the loader's batches that are padding."""
    real = total = 0
    for batch in loader:
        targets = batch["tokens"][:, 1:]
        real += int((targets != PAD_ID).sum())
        total += targets.numel()
    return 1.0 - real / total
