"""Corpora, tokenisation and length-bucketed batches (no Lightning: system.py wraps them in a
`LightningDataModule`, so evaluation and the API can load data without it).

- sources.py: where each split's sentences come from (PTB with its checksums and download, text
  files, anything HF `datasets` reads), checked;
- cache.py: tokenisation into the `datasets` cache, memory-mapped ids, the cached tokenizer and
  the training hash set behind novelty;
- batching.py: length-bucketed, DDP-sharded, resumable batches.
"""

from textvae.data.batching import BucketBatchSampler, ResumableLoader, collate, make_loader, padding_share
from textvae.data.cache import Split, TokenIds, cache_root, framed_lengths, load_corpus, tokenize_source
from textvae.data.sources import (PTB_MD5, SPLITS, Source, check_text_file, download_ptb, hf_sources, md5sum,
                                  ptb_files, split_files, split_sources, text_source, utf8_lines)

__all__ = ["BucketBatchSampler", "ResumableLoader", "collate", "make_loader", "padding_share", "Split", "TokenIds",
           "cache_root", "framed_lengths", "load_corpus", "tokenize_source", "PTB_MD5", "SPLITS", "Source",
           "check_text_file", "download_ptb", "hf_sources", "md5sum", "ptb_files", "split_files", "split_sources",
           "text_source", "utf8_lines"]
