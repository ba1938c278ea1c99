"""Train, save and load the HF `tokenizers` vocabulary; sentence framing and special-token ids.

Two kinds: `word` (WordLevel over whitespace-split tokens, right for PTB whose training text
already contains a literal `<unk>`, used here as the unk token) and `bpe` (byte-level BPE for raw
text). Special tokens have fixed ids 0..3 = <pad>, <unk>, <bos>, <eos>. The tokenizer itself
does not add <bos>/<eos>; `frame` does, so that truncation never cuts the <eos> away.
A pretrained decoder brings its LM's tokenizer instead (pretrained.text_tokenizer), with the LM's
own special ids attached; `special_ids(tokenizer)` gives either, and every function here that
frames, pads or decodes reads them from it (or takes them as an argument).
A `tokenizer_config.json` is written beside `tokenizer.json` so the saved directory also
loads with `transformers.AutoTokenizer`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from textvae.errors import UserError

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS]
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)


class Specials(NamedTuple):
    """The ids that frame, pad and drop words in a vocabulary."""

    pad: int
    unk: int
    bos: int
    eos: int


OWN_SPECIALS = Specials(PAD_ID, UNK_ID, BOS_ID, EOS_ID)


def special_ids(tokenizer) -> Specials:
    """The special ids of `tokenizer`: 0..3 for textvae's own vocabularies; a pretrained decoder's
    tokenizer carries its LM's own (attached by pretrained.text_tokenizer)."""
    return getattr(tokenizer, "textvae_specials", OWN_SPECIALS)


def train_tokenizer(lines: Iterable[str], kind: str, vocab_size: int = 10000, min_frequency: int = 1) -> Tokenizer:
    """Learn a vocabulary from training sentences only."""
    if kind == "word":
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        # The trainer would give a literal "<unk>" in the text (as in PTB) a second id; it is the
        # unk token itself, so keep special tokens out of the counted words.
        lines = (" ".join(w for w in line.split() if w not in SPECIAL_TOKENS) for line in lines)
        trainer = trainers.WordLevelTrainer(
            vocab_size=10**9, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS, show_progress=False)
    elif kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=None))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=max(min_frequency, 2), special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    else:
        raise UserError(f"config: data.tokenizer must be 'word' or 'bpe', got {kind!r}")
    tokenizer.train_from_iterator(lines, trainer=trainer)
    if tokenizer.get_vocab_size() <= len(SPECIAL_TOKENS):
        raise UserError("data: the vocabulary would be empty: the training split has no tokens")
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [PAD_ID, UNK_ID, BOS_ID, EOS_ID]
    return tokenizer


def encode_batch(tokenizer: Tokenizer, sentences: list[str], specials: Specials | None = None) -> list[list[int]]:
    """Token ids of each sentence, without <bos>/<eos>. A literal "<pad>", "<bos>" or "<eos>" in the
    text is an unknown word (<unk>): as its special id it would mask or end the sentence. `specials`
    defaults to the tokenizer's (pass them where it travels through pickling, which drops them)."""
    specials = specials or special_ids(tokenizer)
    framing = {specials.pad, specials.bos, specials.eos}
    return [[specials.unk if i in framing else i for i in encoding.ids]
            for encoding in tokenizer.encode_batch(sentences, add_special_tokens=False)]


def sentence_hash(ids: Iterable[int]) -> int:
    """A 64-bit hash (a signed int64, as Arrow stores it) of a sentence's token ids (without <bos>/<eos>): what novelty compares, so that
    a sample is looked up in the training set without decoding the corpus (evaluate.py)."""
    data = np.asarray(list(ids), dtype="<i4").tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def frame(ids: list[int], max_length: int | None = None, specials: Specials = OWN_SPECIALS) -> list[int]:
    """`<bos> w1 .. wn <eos>`, keeping at most `max_length` words."""
    if max_length is not None:
        ids = ids[:max_length]
    return [specials.bos, *ids, specials.eos]


def clip_framed(framed: list[list[int]], max_words: int) -> tuple[list[list[int]], int]:
    """Framed sentences with each one longer than `max_words` tokens cut to its first `max_words`
    and `<eos>`, and how many were cut (the model's position tables end there)."""
    limit = max_words + 2
    cut = sum(len(ids) > limit for ids in framed)
    return [ids if len(ids) <= limit else [*ids[: limit - 1], ids[-1]] for ids in framed], cut


def pad_batch(sequences: list[list[int]], pad_id: int = PAD_ID) -> torch.Tensor:
    """Framed sentences as one (B, T) tensor of ids, right-padded with <pad> to the longest."""
    tokens = torch.full((len(sequences), max(len(ids) for ids in sequences)), pad_id, dtype=torch.long)
    for row, ids in enumerate(sequences):
        tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return tokens


def length_batches(ids: list[list[int]], batch_size: int,
                   pad_id: int = PAD_ID) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(positions in `ids`, padded tokens) for batches of `batch_size` sentences sorted by length,
    so padding stays small; callers put results back in input order through the positions."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        positions = order[start: start + batch_size]
        yield positions, pad_batch([ids[i] for i in positions], pad_id)


def decode_ids(tokenizer: Tokenizer, sequences: Iterable[list[int]]) -> Iterator[str]:
    """Generated ids (stopping at <eos>, skipping specials other than <unk>) back to text."""
    specials = special_ids(tokenizer)
    sequences = iter(sequences)
    while chunk := list(itertools.islice(sequences, 1024)):  # decode_batch: one call per chunk, in Rust
        cleaned = []
        for ids in chunk:
            ids = list(ids)
            if specials.eos in ids:
                ids = ids[: ids.index(specials.eos)]
            cleaned.append([i for i in ids if i not in (specials.pad, specials.bos)])
        # Without a decoder (word level) tokenizers joins the tokens with single spaces.
        for text in tokenizer.decode_batch(cleaned, skip_special_tokens=False):
            yield text.strip()


def save_tokenizer(tokenizer: Tokenizer, directory: Path) -> None:
    tokenizer.save(str(directory / "tokenizer.json"))
    names = {f"{role}_token": tokenizer.id_to_token(i) for role, i in special_ids(tokenizer)._asdict().items()}
    hf_config = {"tokenizer_class": "PreTrainedTokenizerFast", **names, "model_max_length": 1_000_000}
    (directory / "tokenizer_config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(names, indent=2) + "\n")


def load_tokenizer(directory: Path) -> Tokenizer:
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"model: {path} is missing (the model directory is incomplete)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises bare Exceptions on malformed JSON
        raise UserError(f"model: {path} is not a valid tokenizer ({str(error).splitlines()[0]})") from None
