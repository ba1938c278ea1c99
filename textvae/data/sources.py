"""Reading corpora: where each split's sentences come from, checked, as HF `datasets` tables.

- PTB (`data.dataset: ptb`): Mikolov's three files in `data.root`, MD5-verified; when absent
  they are downloaded once from `data.download_url` (the original simple-examples archive)
  into a temporary directory and moved into place, so a broken download leaves nothing behind.
- Text files (`data.dataset: text`): one UTF-8 sentence per line. Files are first streamed
  line by line through `utf8_lines` (which also checks the CLI's input files) so that a bad
  byte is reported with its line number, then read through HF `datasets` (cached between runs).
- Anything `datasets.load_dataset` reads (`data.dataset: hf`), with a split carved from train
  (fixed seed) where the dataset lacks one.
"""

from __future__ import annotations

import codecs
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
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from textvae.config import DataConfig
from textvae.errors import UserError

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
