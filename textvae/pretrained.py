"""Hugging Face `transformers` models inside the VAE: loading, export and the pretrained encoder.

- `load_hf(name, key, kind)` loads a model and its own tokenizer by Hub name or local directory
  with `from_pretrained`, never `trust_remote_code`. Any failure (offline, unknown name, no
  tokenizer, the wrong kind of model) is a one-line `UserError` naming the config key and the
  name and saying to pass a local directory. The weights are cast to float32 (a checkpoint
  stored in half precision would otherwise train in it); precision is autocast's business.
- An export keeps each HF part in its own folder beside `model.safetensors` (`encoder/`): the
  HF `config.json` and tokenizer files only, written by `save_hf`. `rebuild_hf` makes the
  module from that config (`from_config`: no network, no weights read, nothing unpickled); the
  weights come from the VAE's own `model.safetensors`.
- `PretrainedEncoder` is q(z|x) over an `AutoModel` encoder. It takes the same input as
  model.Encoder, textvae's framed ids, so training, IW scoring, the API, bucketing, DDP and
  resume are unchanged: it turns the ids back into text (a word table for word-level
  vocabularies, the tokenizer's decoder for BPE), runs the HF tokenizer (right padding and an
  attention mask), the HF model, mean pooling over the mask or the first (CLS) position, and one
  linear map to mean and log-variance. The round trip costs about 11 ms per batch of 64 PTB
  sentences on one CPU thread (0.5 ms of it ids to text, the rest the HF tokenizer) and a
  device-to-host copy of the ids on a GPU: about 1% of a frozen MiniLM forward on that CPU.
  `<unk>` becomes the HF tokenizer's own unk token.
- `freeze`: no gradients, the HF module stays in eval mode (no dropout) even while the VAE
  trains, and its forward runs under `no_grad`; only the pooling projection learns.
- The HF pooler (a dense layer + tanh on CLS, used by neither pooling) is removed on load and
  on rebuild: it would be dead weight, and unused trainable parameters break DDP.

transformers is imported only when a pretrained part is used, so other commands start fast.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from torch import nn

from textvae.config import EncoderConfig, ModelConfig
from textvae.errors import UserError
from textvae.tokenizer import EOS_ID, UNK, UNK_ID

log = logging.getLogger("textvae")

OFFLINE_HINT = ("without Hub access pass a local directory holding its config.json, weights and tokenizer files "
                "(scripts/get_minilm.sh fetches all-MiniLM-L6-v2)")


@contextlib.contextmanager
def _quiet_progress():
    """transformers' per-file loading bars, off for the duration (the setting is global)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _reason(error: Exception) -> str:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return first if len(first) <= 200 else first[:197] + "..."


def _check_kind(config, name: str, key: str, kind: str) -> None:
    """Refuse models that `kind` cannot use, from their config alone (before any weights load)."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    model_type = config.model_type
    if kind == "encoder":
        # BERT-family types also have causal-LM heads; decoder-only types have no masked-LM one.
        causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        if causal or getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False):
            what = "an encoder-decoder model" if getattr(config, "is_encoder_decoder", False) else "a causal LM"
            raise UserError(f"config: {key}: {name!r} is {what} ({model_type}), not an encoder such as BERT, "
                            f"RoBERTa or MiniLM")


def load_hf(name: str, key: str, kind: str = "encoder"):
    """(module, tokenizer) for Hub name or directory `name`; `key` is the config key that named it.

    kind "encoder": an `AutoModel` encoder (a causal LM or encoder-decoder is refused)."""
    path = Path(name).expanduser()
    if name.startswith(("/", ".", "~")) and not path.is_dir():
        raise UserError(f"config: {key}: directory {name!r} does not exist")
    try:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        with _quiet_progress():
            config = AutoConfig.from_pretrained(str(path) if path.is_dir() else name, trust_remote_code=False)
            _check_kind(config, name, key, kind)
            source = str(path) if path.is_dir() else name
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
            module = AutoModel.from_pretrained(source, config=config, trust_remote_code=False)
    except UserError:
        raise
    except Exception as error:  # transformers/huggingface_hub raise OSError, ValueError, KeyError, ...
        raise UserError(f"config: {key}: cannot load {name!r} ({type(error).__name__}: {_reason(error)}); "
                        f"{OFFLINE_HINT}") from None
    return _prepare(module.float(), tokenizer, name, key)


def _prepare(module: nn.Module, tokenizer, name: str, key: str):
    ids = set(tokenizer.get_vocab().values())
    # transformers 5 makes a tokenizer of special tokens only when a model has no tokenizer files.
    if not ids - set(tokenizer.all_special_ids):
        raise UserError(f"config: {key}: {name!r} has no tokenizer files (tokenizer.json, vocab.txt, ...); "
                        f"{OFFLINE_HINT}")
    vocab_size = getattr(module.config, "vocab_size", None)
    if vocab_size is not None and max(ids) >= vocab_size:
        raise UserError(f"config: {key}: the tokenizer of {name!r} has ids up to {max(ids)}, beyond the model's "
                        f"{vocab_size} embeddings (a tokenizer of another model?)")
    if getattr(module, "pooler", None) is not None:
        module.pooler = None
    if tokenizer.pad_token is None:  # padding needs some token; the attention mask hides it
        fallback = tokenizer.sep_token or tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise UserError(f"config: {key}: the tokenizer of {name!r} has no padding, separator, end or unknown "
                            f"token to pad batches with")
        tokenizer.pad_token = fallback
    tokenizer.padding_side = "right"  # CLS pooling reads position 0
    return module, tokenizer


def load_parts(config: ModelConfig) -> dict:
    """The HF parts `config` names, by role ("encoder"), as `VAE(hf_parts=...)` takes them: train()
    loads them once, before the run directory is touched, so a bad name changes nothing."""
    parts = {}
    if config.encoder.pretrained is not None:
        parts["encoder"] = load_hf(config.encoder.pretrained, "model.encoder.pretrained")
    return parts


def save_hf(module: nn.Module, tokenizer, directory: Path) -> None:
    """The HF config and tokenizer files of a part into `directory` (its weights live in the
    VAE's model.safetensors)."""
    directory.mkdir(parents=True, exist_ok=True)
    module.config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def rebuild_hf(directory: Path, kind: str = "encoder"):
    """(module, tokenizer) from an export's folder, offline: the module from its config (random
    weights, to be overwritten from model.safetensors), the tokenizer from its files."""
    if not (directory / "config.json").is_file():
        raise UserError(f"model: {directory / 'config.json'} is missing (the model directory is incomplete)")
    try:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        with _quiet_progress():
            config = AutoConfig.from_pretrained(directory, trust_remote_code=False, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False, local_files_only=True)
            module = AutoModel.from_config(config, trust_remote_code=False)
    except Exception as error:
        raise UserError(f"model: cannot rebuild the {kind} in {directory} ({type(error).__name__}: "
                        f"{_reason(error)})") from None
    return _prepare(module.float(), tokenizer, str(directory), "model")


class PretrainedEncoder(nn.Module):
    """q(z|x) from an HF encoder fed by its own tokenizer; reads textvae's framed ids (B, T)."""

    def __init__(self, module: nn.Module, hf_tokenizer, tokenizer, config: EncoderConfig, latent_dim: int):
        super().__init__()
        self.hf = module
        self.hf_tokenizer = hf_tokenizer  # plain attributes: neither is in the state dict
        self.tokenizer = tokenizer
        self.pooling = config.pooling
        self.freeze = config.freeze
        if self.freeze:
            self.hf.requires_grad_(False)
        self.hf.train(not self.freeze)  # from_pretrained leaves it in eval mode, Lightning no longer resets it
        # Positions the HF model holds (2 spare for RoBERTa-style offsets), or its tokenizer's limit.
        positions = getattr(module.config, "max_position_embeddings", None) or 10**9
        self.max_length = min(hf_tokenizer.model_max_length, positions - 2)
        self.warned_cut = False
        # Word-level vocabularies map ids to words with a table; BPE ones need their decoder.
        self.words = None
        if tokenizer.decoder is None:
            self.words = [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]
            self.words[UNK_ID] = hf_tokenizer.unk_token or UNK
        self.to_posterior = nn.Linear(module.config.hidden_size, 2 * latent_dim)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.hf.eval()
        return self

    def texts(self, tokens: torch.Tensor) -> list[str]:
        """The sentences of framed ids (B, T): specials other than <unk> dropped."""
        rows = [[i for i in row if i > EOS_ID or i == UNK_ID] for row in tokens.tolist()]
        if self.words is not None:
            return [" ".join(self.words[i] for i in row) for row in rows]
        texts = self.tokenizer.decode_batch(rows, skip_special_tokens=False)
        unk = self.hf_tokenizer.unk_token
        return [text.replace(UNK, unk) if unk else text for text in texts]

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.hf_tokenizer(self.texts(tokens), padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt").to(tokens.device)
        mask = inputs["attention_mask"]  # (B, S)
        if not self.warned_cut and mask.size(1) == self.max_length:
            self.warned_cut = True
            log.warning("encoder: sentences longer than %d subword tokens are cut for the pretrained encoder",
                        self.max_length)
        with torch.no_grad() if self.freeze else contextlib.nullcontext():
            hidden = self.hf(**inputs).last_hidden_state  # (B, S, H)
        if self.pooling == "cls":
            pooled = hidden[:, 0]  # (B, H)
        else:
            keep = mask.unsqueeze(-1).to(hidden.dtype)  # (B, S, 1)
            pooled = (hidden * keep).sum(1) / keep.sum(1).clamp_min(1)  # (B, H)
        mean, logvar = self.to_posterior(pooled).chunk(2, dim=-1)  # (B, D) each
        return mean, logvar
