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
  replacement is switched off (`use_distributed_sampler=False` in train.py).
"""

from __future__ import annotations

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from textvae.config import DataConfig
from textvae.errors import UserError
from textvae.tokenizer import PAD_ID, encode_batch, frame, pad_batch, special_ids, train_tokenizer

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
    """Fail with the file and line of the first problem: missing, empty, not UTF-8."""
    if not path.is_file():
        raise UserError(f"data: file not found: {path}")
    blank = True
    with open(path, "rb") as handle:
        for line in utf8_lines(handle, f"data: {path}"):  # every line is decoded, the blank check rides along
            blank = blank and not line.strip()
    if blank:
        raise UserError(f"data: {path} is empty")


def read_sentences(path: Path, limit: int | None = None) -> tuple[list[str], int]:
    """Non-empty lines of `path` (the first `limit` of them) through HF datasets (cached), and how
    many empty lines were skipped."""
    import datasets

    check_text_file(path)
    datasets.utils.logging.set_verbosity_error()
    if not sys.stderr.isatty():
        datasets.disable_progress_bars()
    table = datasets.load_dataset("text", data_files=str(path.resolve()), split="train")
    lines = table["text"]
    sentences = [line for line in lines if line.strip()]
    skipped = len(lines) - len(sentences)
    if not sentences:
        raise UserError(f"data: {path} has no sentences after skipping {skipped} empty lines")
    return sentences[:limit], skipped


@dataclass
class Split:
    """One tokenised split: framed ids per sentence, plus what filtering did to it."""

    name: str
    path: Path
    ids: list[list[int]]
    skipped_empty: int = 0
    truncated: int = 0
    lengths: list[int] = field(default_factory=list)  # framed lengths (words + <bos> + <eos>)

    def __post_init__(self):
        self.lengths = [len(ids) for ids in self.ids]


def tokenize_split(name: str, path: Path, sentences: list[str], skipped: int, tokenizer,
                   max_length: int | None) -> Split:
    if not sentences:
        raise UserError(f"data: the {name} split ({path}) is empty after skipping empty lines")
    words = encode_batch(tokenizer, sentences)
    truncated = sum(len(ids) > max_length for ids in words) if max_length else 0
    specials = special_ids(tokenizer)
    split = Split(name, path, [frame(ids, max_length, specials) for ids in words], skipped, truncated)
    if skipped:
        log.info("data: skipped %d empty lines in %s", skipped, path)
    if truncated:
        log.warning("data: truncated %d of %d %s sentences to data.max_length=%d tokens",
                    truncated, len(words), name, max_length)
    return split


def load_corpus(config: DataConfig, tokenizer=None, splits=SPLITS):
    """Read and tokenise the splits; trains the tokenizer on train when none is given."""
    files = split_files(config)
    raw = {split: read_sentences(files[split], config.limit) for split in splits}
    if tokenizer is None:
        train_sentences = raw["train"][0] if "train" in raw else read_sentences(files["train"], config.limit)[0]
        tokenizer = train_tokenizer(train_sentences, config.tokenizer, config.vocab_size, config.min_frequency)
    corpus = {
        split: tokenize_split(split, files[split], sentences, skipped, tokenizer,
                              config.max_length if split == "train" else None)
        for split, (sentences, skipped) in raw.items()
    }
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

    def __init__(self, lengths: list[int], batch_size: int, shuffle: bool = True, seed: int = 0,
                 pool: int = 100, num_replicas: int = 1, rank: int = 0):
        if len(lengths) < num_replicas:
            raise UserError(f"data: {len(lengths)} sentences cannot be split across {num_replicas} devices")
        self.lengths = torch.as_tensor(lengths)
        self.batch_size, self.shuffle, self.seed, self.pool = batch_size, shuffle, seed, pool
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        # Lightning calls set_epoch on `dataloader.batch_sampler.sampler`; point it here.
        self.sampler = self
        self._length = len(self._all_batches())
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

    def _all_batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        count = len(self.lengths)
        if self.shuffle:
            order = torch.randperm(count, generator=generator)
            pool_size = self.batch_size * self.pool
        else:
            order = torch.arange(count)
            pool_size = count
        batches = []
        for start in range(0, count, pool_size):
            pool = order[start: start + pool_size]
            pool = pool[torch.argsort(self.lengths[pool], stable=True)]
            batches.extend(pool.split(self.batch_size))
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        while len(batches) % self.num_replicas:
            largest = max(range(len(batches)), key=lambda i: len(batches[i]))
            if len(batches[largest]) == 1:
                raise UserError(f"data: {count} sentences in batches of 1 cannot be split evenly across "
                                f"{self.num_replicas} devices; use a larger data.batch_size")
            half = len(batches[largest]) // 2
            batches[largest: largest + 1] = [batches[largest][:half], batches[largest][half:]]
        return [batch.tolist() for batch in batches]

    def __iter__(self):
        # A generator, so the batch list is built at the first batch, after Lightning's set_epoch.
        batches = self._all_batches()[self.rank:: self.num_replicas]
        if self._resume_at is not None:
            epoch, done = self._resume_at
            self._resume_at, self.skipped = None, done if epoch == self.epoch else 0
        self.yielded = 0
        for batch in batches[self.skipped:]:
            self.yielded += 1
            yield batch

    def __len__(self) -> int:
        return self._length // self.num_replicas


def collate(batch: list[tuple[int, list[int]]], pad_id: int = PAD_ID) -> dict[str, torch.Tensor]:
    """Pad framed sentences to the batch maximum; keep their corpus indices."""
    indices, sequences = zip(*batch)
    return {"tokens": pad_batch(sequences, pad_id), "index": torch.tensor(indices)}


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, ids: list[list[int]]):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        return index, self.ids[index]


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


def make_loader(ids: list[list[int]], batch_size: int, shuffle: bool, seed: int = 0, pool: int = 100,
                num_replicas: int = 1, rank: int = 0, num_workers: int = 0, pad_id: int = PAD_ID) -> ResumableLoader:
    sampler = BucketBatchSampler([len(x) for x in ids], batch_size, shuffle, seed, pool, num_replicas, rank)
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
