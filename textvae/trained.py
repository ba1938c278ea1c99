"""`TrainedModel`: a trained VAE with its tokenizer and config, loaded from or saved to a model
directory, that encodes, decodes and samples (no Lightning needed). Evaluation, compression and
scoring take it; `api.TextVAE` adds the rest of the public API on top.

A model directory holds `config.json` (format version, the training config, vocabulary size and
the validation NLL quantiles used for `score --percentile`), `model.safetensors` and the HF
`tokenizer.json` (+ `tokenizer_config.json` for `AutoTokenizer`). A pretrained encoder's HF
config and tokenizer files sit in `encoder/` (its weights are in `model.safetensors` with the
rest) and it is rebuilt from them offline. Loading reads only JSON, tokenizer files and
safetensors, so an untrusted model directory runs no code. `save_pretrained` writes into a
temporary sibling directory and renames it into place, so a crash never leaves a half-written
model under the final name.

Sentences are tokenised exactly as in training (`<bos> w1 .. wn <eos>`); unknown words become
`<unk>` with one warning per call. Work is batched by length and returned in input order.

Length limits are the model's position tables, checked in one place each: a sentence longer than
`max_words` tokens is cut to its first `max_words` (and `<eos>`) by `clip_to_model`, which warns
and returns the count (every sentence the model reads goes through it); `--max-length` beyond
what a transformer decoder can produce is a `UserError` (`check_max_length`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterator

import torch

from textvae.config import Config, from_dict
from textvae.device import bf16_fallback, resolve_device
from textvae.errors import UserError
from textvae.files import atomic_write_dir, atomic_write_text
from textvae.generate import STRATEGIES, decode_codes
from textvae.model import VAE
from textvae.pretrained import PretrainedDecoder, PretrainedEncoder, rebuild_hf, save_hf, text_tokenizer
from textvae.tokenizer import (UNK, clip_framed, decode_ids, encode_batch, frame, length_batches, load_tokenizer,
                               save_tokenizer, special_ids)

log = logging.getLogger("textvae")

FORMAT_VERSION = 1
NO_MODEL_HINT = "train one with `textvae train --config configs/ptb.yaml` or pass --model DIR"
DEFAULT_MAX_LENGTH = 50  # tokens per decoded sentence when not given (capped to the decoder's positions)


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A model directory, or a run directory (`runs/latest`, `runs/ptb`) holding `model/`."""
    path = Path(path)
    if not path.exists():
        if path.name == "latest":
            raise UserError(f"model: no trained model at {path}; {NO_MODEL_HINT}")
        raise UserError(f"model: {path} does not exist; {NO_MODEL_HINT}")
    if (path / "model" / "config.json").is_file():
        return path / "model"
    if not (path / "config.json").is_file():
        raise UserError(f"model: {path} is not a model directory (no config.json); {NO_MODEL_HINT}")
    return path


ZLIB_DICT = "zlib_dict.txt"  # in a model directory: training sentences, zlib's preset dictionary (anomaly.py)


class TrainedModel:
    """A trained text VAE with its tokenizer and config: load, save, tokenize, encode, decode, sample."""

    def __init__(self, model: VAE, tokenizer, config: Config, extra: dict | None = None, precision: str = "32"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config
        self.extra = dict(extra or {})
        self.precision = check_precision(precision)
        if self.precision == "bf16" and bf16_fallback(self.device, "--precision bf16"):
            self.precision = "32"
        self.max_words = config.model.max_words  # longest sentence (tokens besides <bos>/<eos>) it reads
        self.zlib_dict: bytes | None = None  # training text that primes zlib for the `complexity` score

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def latent_dim(self) -> int:
        return self.config.model.latent_dim

    # -------------------------------------------------------------------------- saving/loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike = "runs/latest", device: str | torch.device = "auto",
                        precision: str = "32") -> "TrainedModel":
        """Load a saved model onto `device` ("auto": CUDA, else MPS, else CPU; or "cpu", "cuda",
        "cuda:N", "mps"; see device.resolve_device), where all its work then runs.
        `precision="bf16"` runs encode/decode/score under bfloat16 autocast on that device: about
        3x faster on CPUs with bf16 units (and on GPUs), with log-likelihoods still summed in
        float32; greedy outputs can differ from float32 ones where two words are nearly tied.
        Where bf16 is emulated (an AVX2-only CPU, see device.fast_bf16) it warns and runs in float32."""
        check_precision(precision)
        device = resolve_device(device)
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = resolve_model_dir(path)
        try:
            meta = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UserError(f"model: {directory / 'config.json'} is not valid JSON ({error})") from None
        missing = [key for key in ("format_version", "config", "vocab_size") if key not in meta]
        if missing:
            raise UserError(f"model: {directory / 'config.json'} lacks {', '.join(missing)} (not a textvae model?)")
        if not isinstance(meta["format_version"], int) or meta["format_version"] > FORMAT_VERSION:
            raise UserError(f"model: {directory} has format_version {meta['format_version']!r}, this textvae reads "
                            f"up to {FORMAT_VERSION}; upgrade textvae")
        config = from_dict(Config, meta["config"])
        weights_path = directory / "model.safetensors"
        if not weights_path.is_file():
            raise UserError(f"model: {weights_path} is missing (the model directory is incomplete)")
        try:
            weights = load_file(str(weights_path), device=str(device))
        except (SafetensorError, OSError, ValueError) as error:
            raise UserError(f"model: {weights_path} is corrupted or truncated ({error})") from None
        tokenizer = load_tokenizer(directory)
        hf_parts = {}
        if config.model.encoder.pretrained is not None and config.model.latent != "none":
            hf_parts["encoder"] = rebuild_hf(directory / "encoder", "encoder")
        if config.model.decoder.type == "pretrained":  # its vocabulary and special ids are the LM's
            hf_parts["decoder"] = rebuild_hf(directory / "decoder", "decoder")
            tokenizer = text_tokenizer(hf_parts["decoder"][1])
        model = VAE(config.model, meta["vocab_size"], tokenizer, hf_parts)
        state = model.state_dict()
        for name in model.tied_names() - weights.keys():  # stored once, under the name it is tied to
            weights[name] = state[name]
        try:
            model.load_state_dict(weights)
        except RuntimeError as error:
            first = str(error).splitlines()[1 if len(str(error).splitlines()) > 1 else 0].strip()
            raise UserError(f"model: {weights_path} does not match its config.json ({first})") from None
        extra = {k: v for k, v in meta.items() if k not in ("format_version", "config", "vocab_size")}
        loaded = cls(model.to(device), tokenizer, config, extra, precision)
        dictionary = directory / ZLIB_DICT
        loaded.zlib_dict = dictionary.read_bytes() if dictionary.is_file() else None
        return loaded

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)

        def write(tmp: Path) -> None:
            (tmp / "config.json").write_text(self._config_json())
            tied = self.model.tied_names()
            state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.model.state_dict().items()
                     if name not in tied}
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            save_tokenizer(self.tokenizer, tmp)
            if self.zlib_dict is not None:
                (tmp / ZLIB_DICT).write_bytes(self.zlib_dict)
            if isinstance(self.model.encoder, PretrainedEncoder):
                save_hf(self.model.encoder.hf, self.model.encoder.hf_tokenizer, tmp / "encoder")
            if isinstance(self.model.decoder, PretrainedDecoder):
                save_hf(self.model.decoder.hf, self.model.decoder.hf_tokenizer, tmp / "decoder")

        atomic_write_dir(directory, write)
        return directory

    def save_config(self, directory: str | os.PathLike) -> None:
        """Rewrite only `config.json` of a model directory that `save_pretrained` wrote for this
        model (atomically): for what is known only after export, such as the anomaly quantiles."""
        atomic_write_text(Path(directory) / "config.json", self._config_json())

    def _config_json(self) -> str:
        meta = {"format_version": FORMAT_VERSION, "vocab_size": self.model.vocab_size,
                "config": self.config.to_dict(), **self.extra}
        return json.dumps(meta, indent=2) + "\n"

    def autocast(self):
        """bfloat16 autocast on the model's device when `precision` is "bf16", else a no-op."""
        return autocast(self.device, self.precision)

    def clamp_length(self, max_length: int) -> int:
        """`max_length`, or `max_new_tokens` if the decoder cannot produce that many."""
        return max_length if self.max_new_tokens is None else min(max_length, self.max_new_tokens)

    # ------------------------------------------------------------------------------ tokenising
    def tokenize(self, sentences: list[str]) -> list[list[int]]:
        """Framed ids for each sentence, cut to what the model reads (`clip_to_model`); warns once
        about unknown words and once about over-long sentences."""
        if isinstance(sentences, str):
            raise TypeError("pass a list of sentences, not a single string")
        specials = special_ids(self.tokenizer)
        words = encode_batch(self.tokenizer, list(sentences))
        unknown = sum(ids.count(specials.unk) for ids in words) - sum(s.split().count(UNK) for s in sentences)
        if unknown > 0:
            log.warning("%d unknown word(s) mapped to %s", unknown, self.tokenizer.id_to_token(specials.unk))
        framed, _ = self.clip_to_model([frame(ids, specials=specials) for ids in words])
        return framed

    def clip_to_model(self, framed: list[list[int]]) -> tuple[list[list[int]], int]:
        """Framed sentences (`<bos> w1 .. wn <eos>`, e.g. a corpus split's ids) with each one longer
        than `max_words` tokens cut to its first `max_words` and `<eos>`, and how many were cut.

        The encoder's and a transformer decoder's position tables end there, so the model cannot
        read the rest: scores and metrics of cut sentences cover their first `max_words` tokens
        only. Warns when any sentence was cut; evaluation should also report the count.
        """
        framed, cut = clip_framed(framed, self.max_words)
        if cut:
            log.warning("%d of %d sentence(s) are longer than the %d tokens this model reads (its position "
                        "tables); each was cut to its first %d tokens", cut, len(framed), self.max_words,
                        self.max_words)
        return framed, cut

    @property
    def max_new_tokens(self) -> int | None:
        """Most tokens one decode can produce (words + <eos>): a transformer decoder feeds <bos> and
        each produced token but the last through its position table, as does a pretrained LM
        through its own; a GRU has no limit (None)."""
        decoder = self.config.model.decoder
        if decoder.type == "pretrained":
            return self.model.decoder.max_positions
        return decoder.max_positions if decoder.type == "transformer" else None

    def check_max_length(self, max_length: int | None) -> int:
        """The `max_length` to decode with: as given if the decoder can produce it, else a
        `UserError`; None gives DEFAULT_MAX_LENGTH, capped to the decoder."""
        limit = self.max_new_tokens
        if max_length is None:
            return DEFAULT_MAX_LENGTH if limit is None else min(DEFAULT_MAX_LENGTH, limit)
        if max_length < 1:
            raise UserError(f"--max-length must be at least 1, got {max_length}")
        if limit is not None and max_length > limit:
            held = (f"its pretrained decoder has {limit} positions" if self.config.model.decoder.type == "pretrained"
                    else f"its transformer decoder has model.decoder.max_positions={limit}")
            raise UserError(f"--max-length must be at most {limit} for this model ({held}), got {max_length}")
        return max_length

    # ----------------------------------------------------------------------------- operations
    @torch.no_grad()
    def posterior(self, sentences: list[str], batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) of each sentence: posterior means and log-variances, each (n, latent_dim), on the
        model's device."""
        ids = self.tokenize(sentences)
        means = torch.empty(len(ids), self.latent_dim, device=self.device)
        logvars = torch.empty_like(means)
        for positions, tokens in length_batches(ids, batch_size, special_ids(self.tokenizer).pad):
            with self.autocast():
                mean, logvar = self.model.encode(tokens.to(self.device))
            means[positions], logvars[positions] = mean.float(), logvar.float()
        return means, logvars

    @torch.no_grad()
    def encode(self, sentences: list[str], sample: bool = False, seed: int | None = None,
               batch_size: int = 256) -> torch.Tensor:
        """Codes (n, latent_dim) on the model's device: posterior means, or draws from q(z|x) with
        `sample=True`."""
        mean, logvar = self.posterior(sentences, batch_size)
        if not sample:
            return mean
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        return self.model.reparameterize(mean, logvar, generator)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, strategy: str = "greedy", temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, beam_size: int = 4, max_length: int | None = None,
               seed: int | None = None, batch_size: int = 500, use_cache: bool = True) -> list[str]:
        """Sentences for codes `z` (n, latent_dim), each at most `max_length` tokens (see
        `check_max_length`; a transformer decoder cannot go past its positions) and on one line."""
        check_decoding(strategy, temperature, top_k, top_p, beam_size, max_length)
        max_length = self.check_max_length(max_length)
        z = torch.as_tensor(z, dtype=torch.float32, device=self.device)
        if z.dim() != 2 or z.size(1) != self.latent_dim:
            raise UserError(f"codes must have shape (n, {self.latent_dim}), got {tuple(z.shape)}")
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        out = []
        for start in range(0, z.size(0), batch_size):
            with self.autocast():
                ids = decode_codes(self.model, z[start: start + batch_size].to(self.device), strategy, max_length,
                                   temperature, top_k, top_p, beam_size, generator, use_cache)
            # One sentence, one line: a byte-level BPE model can produce line-break bytes, which
            # would split an output in two; they become spaces.
            out.extend(" ".join(text.splitlines()) for text in decode_ids(self.tokenizer, ids))
        return out

    def iter_samples(self, n: int, seed: int | None = None, batch_size: int = 500, **decoding) -> Iterator[str]:
        """`n` sentences from the prior, yielded batch by batch (memory stays flat for any n)."""
        if n < 1:
            raise UserError(f"--n must be at least 1, got {n}")
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        decode_seed = seed
        for start in range(0, n, batch_size):
            count = min(batch_size, n - start)
            z = torch.randn(count, self.latent_dim, generator=generator, device=self.device)
            yield from self.decode(z, seed=decode_seed, batch_size=batch_size, **decoding)
            decode_seed = None if seed is None else decode_seed + 1

    def sample(self, n: int = 20, strategy: str = "sample", seed: int | None = None, **decoding) -> list[str]:
        """`n` sentences decoded from z ~ N(0, I)."""
        return list(self.iter_samples(n, seed=seed, strategy=strategy, **decoding))

    def reconstruct(self, sentences: list[str], **decoding) -> list[str]:
        """Encode (posterior mean) and decode each sentence."""
        self.check_max_length(decoding.get("max_length"))  # before the encoding work, not after
        return self.decode(self.encode(sentences), **decoding)


def check_precision(precision: str) -> str:
    if precision not in ("32", "bf16"):
        raise UserError(f"--precision must be 32 or bf16, got {precision!r}")
    return precision


def autocast(device: torch.device, precision: str):
    """bfloat16 autocast on `device` for `precision="bf16"`, a no-op context for "32"."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=check_precision(precision) == "bf16")


def check_decoding(strategy: str, temperature: float, top_k: int | None, top_p: float | None, beam_size: int,
                   max_length: int | None) -> None:
    """Checks that need no model (the CLI runs them before loading one); see also
    `TextVAE.check_max_length`."""
    if strategy not in STRATEGIES:
        raise UserError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if temperature <= 0:
        raise UserError(f"--temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {top_p}")
    if beam_size < 1:
        raise UserError(f"--beam-size must be at least 1, got {beam_size}")
    if max_length is not None and max_length < 1:
        raise UserError(f"--max-length must be at least 1, got {max_length}")
