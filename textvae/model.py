"""The VAE as plain PyTorch: transformer encoder, GRU and transformer decoders.

- Encoder: token + learned position embeddings, pre-norm transformer layers, mean pooling over
  non-pad positions, one linear map to the mean and log-variance of q(z|x). With
  `model.encoder.pretrained` a Hugging Face encoder takes its place (pretrained.py), behind the
  same call: framed ids in, mean and log-variance out.
- `GRUDecoder`: z sets the initial hidden state of every layer and/or is concatenated to every
  input embedding. `TransformerDecoder`: causal self-attention; z is projected to a few memory
  vectors for cross-attention and/or added to every input embedding. Both expose the same
  three calls used by training and generation: `forward` (teacher forcing over a whole
  sequence), `start` (decoding state for a batch of codes) and `step` (one token, with the
  transformer reusing cached keys/values unless told not to).
- The output projection and the loss run only on real (non-pad) target positions: with
  bucketed batches that is most of the saving, and it keeps padding out of the softmax. They
  run in blocks of `LOSS_ROWS` positions, so the float logits never fill memory.
- Inputs longer than a position table (`max_positions`) are a caller's bug and raise: sentences
  are cut to `ModelConfig.max_words` where they are tokenised, with a count, never silently here.
- `model.bow_weight` adds a bag-of-words head: one linear map from z to vocabulary logits, whose
  NLL of the sentence's words (order ignored) is an auxiliary training loss (system.py).
- Weight tying shares the input embedding with the output projection (a linear map from the
  decoder width to the embedding size is inserted when they differ).
- `model.decoder.type: pretrained` puts an HF causal LM in the decoder's place (pretrained.py),
  behind the same calls; the vocabulary and the special ids (`VAE.specials`) are then the LM's.

The training objective, schedules and logging live in system.py; this file has no Lightning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from textvae.config import DecoderConfig, EncoderConfig, ModelConfig
from textvae.kvcache import cached_step
from textvae.pretrained import PretrainedDecoder, PretrainedEncoder, lm_specials
from textvae.tokenizer import OWN_SPECIALS, PAD_ID


# Target positions per block of the output projection + cross-entropy. One (N, V) float logits
# matrix for a whole batch is hundreds of MB and runs at memory speed; blocks of 256 rows are
# 2-3x faster on CPU for the loss forward and backward alike, with identical results.
LOSS_ROWS = 256


class Encoder(nn.Module):
    def __init__(self, vocab_size: int, config: EncoderConfig, latent_dim: int, pad_id: int = PAD_ID):
        super().__init__()
        self.max_positions = config.max_positions
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, config.width, padding_idx=pad_id)
        self.position = nn.Embedding(config.max_positions, config.width)
        layer = nn.TransformerEncoderLayer(config.width, config.heads, config.feedforward, config.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.width)
        self.to_posterior = nn.Linear(config.width, 2 * latent_dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Callers cut longer sentences where they tokenise them (TrainedModel.clip_to_model, counted and
        # warned); cutting them here would hide it.
        if tokens.size(1) > self.max_positions:
            raise ValueError(f"sequence of {tokens.size(1)} tokens is longer than "
                             f"model.encoder.max_positions={self.max_positions}")
        pad = tokens == self.pad_id  # (B, T)
        positions = torch.arange(tokens.size(1), device=tokens.device)
        hidden = self.embed(tokens) + self.position(positions)  # (B, T, W)
        hidden = self.norm(self.layers(hidden, src_key_padding_mask=pad))
        keep = (~pad).unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * keep).sum(1) / keep.sum(1).clamp_min(1)  # (B, W)
        mean, logvar = self.to_posterior(pooled).chunk(2, dim=-1)  # (B, D) each
        return mean, logvar


class GRUDecoder(nn.Module):
    def __init__(self, vocab_size: int, config: DecoderConfig, latent_dim: int):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(vocab_size, config.embed_dim, padding_idx=PAD_ID)
        self.z_concat = config.z_concat_input and latent_dim > 0  # latent_dim 0: no latent, a plain LM
        input_dim = config.embed_dim + (latent_dim if self.z_concat else 0)
        self.gru = nn.GRU(input_dim, config.hidden, config.layers, batch_first=True,
                          dropout=config.dropout if config.layers > 1 else 0.0)
        self.z_to_hidden = None
        if config.z_init_hidden and latent_dim > 0:
            self.z_to_hidden = nn.Linear(latent_dim, config.hidden * config.layers)
        # Skip connection (Dieng et al. 2019): z reaches every output directly, not only through
        # the recurrence that the decoder can learn to ignore.
        self.z_to_output = nn.Linear(latent_dim, config.hidden) if config.z_skip and latent_dim > 0 else None
        self.dropout = nn.Dropout(config.dropout)
        self.width = config.hidden

    def start(self, z: torch.Tensor) -> dict:
        batch = z.size(0)
        if self.z_to_hidden is not None:
            hidden = torch.tanh(self.z_to_hidden(z)).view(batch, self.config.layers, self.config.hidden)
            hidden = hidden.transpose(0, 1).contiguous()  # (L, B, H)
        else:
            hidden = z.new_zeros(self.config.layers, batch, self.config.hidden)
        return {"hidden": hidden, "z": z}

    def forward(self, inputs: torch.Tensor, z: torch.Tensor, state: dict | None = None):
        """Features (B, T, H) for every input position; returns the state after the last one."""
        state = state if state is not None else self.start(z)
        embedded = self.dropout(self.embed(inputs))  # (B, T, E)
        if self.z_concat:
            embedded = torch.cat([embedded, state["z"].unsqueeze(1).expand(-1, inputs.size(1), -1)], dim=-1)
        output, hidden = self.gru(embedded, state["hidden"])  # (B, T, H), (L, B, H)
        if self.z_to_output is not None:
            output = output + self.z_to_output(state["z"]).unsqueeze(1)
        return self.dropout(output), {"hidden": hidden, "z": state["z"]}

    def step(self, token: torch.Tensor, state: dict, use_cache: bool = True):
        features, state = self.forward(token.unsqueeze(1), state["z"], state)
        return features[:, 0], state

    @staticmethod
    def reorder(state: dict, index: torch.Tensor) -> dict:
        return {"hidden": state["hidden"][:, index], "z": state["z"][index]}


class DecoderBlock(nn.Module):
    """Pre-norm block: causal self-attention (cacheable), optional cross-attention, MLP."""

    def __init__(self, config: DecoderConfig, cross: bool):
        super().__init__()
        width, self.heads = config.hidden, config.heads
        self.norm_self = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.self_out = nn.Linear(width, width)
        self.cross = cross
        if self.cross:
            self.norm_cross = nn.LayerNorm(width)
            self.cross_q = nn.Linear(width, width)
            self.cross_kv = nn.Linear(width, 2 * width)
            self.cross_out = nn.Linear(width, width)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, config.feedforward), nn.GELU(),
                                 nn.Linear(config.feedforward, width))
        self.dropout = nn.Dropout(config.dropout)
        self.attention_dropout = config.dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.heads, width // self.heads).transpose(1, 2)  # (B, h, T, d)

    def _attend(self, q, k, v, causal: bool) -> torch.Tensor:
        dropout = self.attention_dropout if self.training else 0.0
        queries, keys = q.size(2), k.size(2)
        if causal and queries != keys:  # new positions after a cached prefix: align the mask bottom-right
            mask = torch.ones(queries, keys, dtype=torch.bool, device=q.device).tril(keys - queries)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=causal)  # (B, h, T, d)
        batch, heads, length, dim = out.shape
        return out.transpose(1, 2).reshape(batch, length, heads * dim)

    def forward(self, x: torch.Tensor, memory_kv, cache: dict | None) -> torch.Tensor:
        q, k, v = self._heads_qkv(self.norm_self(x))
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        # Causal masking is needed only when several new positions are processed at once.
        x = x + self.dropout(self.self_out(self._attend(q, k, v, causal=q.size(2) > 1)))
        if self.cross:
            q = self._heads(self.cross_q(self.norm_cross(x)))
            x = x + self.dropout(self.cross_out(self._attend(q, *memory_kv, causal=False)))
        return x + self.dropout(self.mlp(self.norm_mlp(x)))

    def _heads_qkv(self, x):
        return [self._heads(part) for part in self.qkv(x).chunk(3, dim=-1)]

    def memory_kv(self, memory: torch.Tensor):
        return [self._heads(part) for part in self.cross_kv(memory).chunk(2, dim=-1)]


class TransformerDecoder(nn.Module):
    def __init__(self, vocab_size: int, config: DecoderConfig, latent_dim: int):
        super().__init__()
        self.config = config
        width = config.hidden
        self.embed = nn.Embedding(vocab_size, width, padding_idx=PAD_ID)
        self.position = nn.Embedding(config.max_positions, width)
        inject = latent_dim > 0  # latent_dim 0: no latent, a plain LM
        self.z_to_memory = None
        if config.z_cross_attention and inject:
            self.z_to_memory = nn.Linear(latent_dim, config.memory_slots * width)
        self.z_to_input = nn.Linear(latent_dim, width) if config.z_add_input and inject else None
        if self.z_to_input is not None:
            # Start z's share of the input on the scale of the token and position embeddings (std
            # 0.02): with nn.Linear's default init it is ~30x larger and drowns out the tokens,
            # which slows learning badly.
            nn.init.normal_(self.z_to_input.weight, std=0.02 / latent_dim**0.5)
            nn.init.zeros_(self.z_to_input.bias)
        cross = self.z_to_memory is not None
        self.blocks = nn.ModuleList(DecoderBlock(config, cross) for _ in range(config.layers))
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(config.dropout)
        self.width = width

    def start(self, z: torch.Tensor) -> dict:
        state = {"z": z, "position": 0, "caches": [{} for _ in self.blocks], "prefix": None}
        if self.z_to_memory is not None:
            memory = self.z_to_memory(z).view(z.size(0), self.config.memory_slots, self.width)  # (B, S, W)
            state["memory_kv"] = [block.memory_kv(memory) for block in self.blocks]
        else:
            state["memory_kv"] = [None] * len(self.blocks)
        return state

    def forward(self, inputs: torch.Tensor, z: torch.Tensor, state: dict | None = None, use_cache: bool = False):
        state = state if state is not None else self.start(z)
        start = state["position"]
        positions = torch.arange(start, start + inputs.size(1), device=inputs.device)
        if positions[-1] >= self.config.max_positions:
            raise ValueError(f"sequence longer than model.decoder.max_positions={self.config.max_positions}")
        # Token embeddings scaled by sqrt(width) as in Vaswani et al.: they share their (std 0.02)
        # weights with the output projection, and unscaled they start out no larger than the
        # position embeddings; scaled, PTB training gets ~0.25 nats/token further in 300 steps.
        hidden = self.embed(inputs) * self.width**0.5 + self.position(positions)  # (B, T, W)
        if self.z_to_input is not None:
            hidden = hidden + self.z_to_input(state["z"]).unsqueeze(1)
        hidden = self.dropout(hidden)
        for block, memory_kv, cache in zip(self.blocks, state["memory_kv"], state["caches"]):
            hidden = block(hidden, memory_kv, cache if use_cache else None)
        state = dict(state, position=start + inputs.size(1))
        return self.dropout(self.norm(hidden)), state

    def step(self, token: torch.Tensor, state: dict, use_cache: bool = True):
        return cached_step(self, token, state, use_cache)

    @staticmethod
    def reorder(state: dict, index: torch.Tensor) -> dict:
        caches = [{name: tensor[index] for name, tensor in cache.items()} for cache in state["caches"]]
        memory_kv = [None if kv is None else [t[index] for t in kv] for kv in state["memory_kv"]]
        prefix = None if state["prefix"] is None else state["prefix"][index]
        return dict(state, z=state["z"][index], caches=caches, memory_kv=memory_kv, prefix=prefix)


def _part(hf_parts: dict | None, role: str):
    if not hf_parts or role not in hf_parts:
        raise ValueError(f"a pretrained {role} needs its built parts: pass hf_parts (pretrained.load_parts)")
    return hf_parts[role]


class VAE(nn.Module):
    """q(z|x) and p(x|z); `forward` gives per-sentence reconstruction NLL and per-dimension KL.

    Pretrained parts arrive built, as `hf_parts` (role -> (module, HF tokenizer)): loaded by
    `pretrained.load_parts` or rebuilt from an export by `pretrained.rebuild_hf`; this file does no
    Hugging Face I/O. A pretrained encoder (`model.encoder.pretrained`) also needs textvae's
    `tokenizer` (it reads the sentences as text). With a pretrained decoder
    (`model.decoder.type: pretrained`) the vocabulary (`vocab_size`, the output rows) and the
    special ids (`specials`) are the LM's.
    """

    def __init__(self, config: ModelConfig, vocab_size: int, tokenizer=None, hf_parts: dict | None = None):
        super().__init__()
        self.config = config
        lm_parts = None
        self.specials = OWN_SPECIALS
        if config.decoder.type == "pretrained":
            lm_parts = _part(hf_parts, "decoder")
            self.specials = lm_specials(lm_parts[1])
            vocab_size = lm_parts[0].get_output_embeddings().weight.size(0)
        self.vocab_size = vocab_size
        pretrained = config.encoder.pretrained
        # model.latent "none": no encoder and no way for z into the decoder (its latent_dim is 0);
        # encode() gives q(z|x) = N(0, I) = p(z), so KL = 0 and every estimate is the LM's own.
        self.has_latent = config.latent != "none"
        self.decoder_latent_dim = config.latent_dim if self.has_latent else 0
        self.encoder = None
        if pretrained is None and self.has_latent:
            self.encoder = Encoder(vocab_size, config.encoder, config.latent_dim, self.specials.pad)
        self.decoder = self.to_embedding = self.output = self.output_bias = None
        if lm_parts is None:
            decoder_class = GRUDecoder if config.decoder.type == "gru" else TransformerDecoder
            self.decoder = decoder_class(vocab_size, config.decoder, self.decoder_latent_dim)
            embed_dim = self.decoder.embed.embedding_dim
            self.to_embedding = nn.Linear(self.decoder.width, embed_dim) if self.decoder.width != embed_dim else None
            if config.decoder.tie_embeddings:
                self.output_bias = nn.Parameter(torch.zeros(vocab_size))
            else:
                self.output = nn.Linear(self.decoder.width, vocab_size)
        self.posterior_bn = None
        if config.posterior_bn > 0:
            # BN-VAE: each dimension's posterior means are normalised over the batch to a fixed
            # scale gamma (frozen) and a learnt shift, so E_x[mean_d^2] >= gamma^2 and the expected
            # KL per dimension is at least gamma^2 / 2: the posterior cannot collapse.
            self.posterior_bn = nn.BatchNorm1d(config.latent_dim)
            self.posterior_bn.weight.requires_grad_(False)
        self.apply(self._init_weights)
        if self.posterior_bn is not None:
            nn.init.constant_(self.posterior_bn.weight, config.posterior_bn)
        # Bag-of-words head (Zhao et al. 2017): z alone predicts every word of its sentence, so the
        # encoder learns informative codes from the first step instead of waiting for the decoder.
        # Made last, so the rest of the model is initialised as it would be without it.
        self.bow = nn.Linear(config.latent_dim, vocab_size) if config.bow_weight > 0 else None
        # HF parts come after the init above, which would overwrite their trained embeddings.
        if pretrained is not None and self.has_latent:
            if tokenizer is None:
                raise ValueError("a pretrained encoder needs textvae's tokenizer")
            self.encoder = PretrainedEncoder(*_part(hf_parts, "encoder"), tokenizer, config.encoder, config.latent_dim)
        if lm_parts is not None:
            self.decoder = PretrainedDecoder(*lm_parts, config.decoder, self.decoder_latent_dim)

    def reset_decoder(self) -> list[nn.Parameter]:
        """Re-initialise the native decoder and its output layers in place, as a new model would be
        (optimizers keep their references): the restart after autoencoder pretraining (kl.ae_steps,
        Li et al. 2019). The encoder, and the posterior map, keep what they learnt. Returns the
        parameters it reset."""
        if isinstance(self.decoder, PretrainedDecoder):
            raise ValueError("a pretrained decoder is not re-initialised")
        fresh = nn.ModuleDict({"decoder": type(self.decoder)(self.vocab_size, self.config.decoder,
                                                             self.decoder_latent_dim)})
        if self.to_embedding is not None:
            fresh["to_embedding"] = nn.Linear(self.to_embedding.in_features, self.to_embedding.out_features)
        if self.output is not None:
            fresh["output"] = nn.Linear(self.output.in_features, self.output.out_features)
        fresh.apply(self._init_weights)
        reset = []
        with torch.no_grad():
            for name, module in fresh.items():
                for old, new in zip(getattr(self, name).parameters(), module.parameters(), strict=True):
                    old.copy_(new)
                    reset.append(old)
            if self.output_bias is not None:
                self.output_bias.zero_()
                reset.append(self.output_bias)
        return reset

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (..., V) from decoder features (..., H)."""
        if isinstance(self.decoder, PretrainedDecoder):
            return self.decoder.logits(features)
        if self.output is not None:
            return self.output(features)
        if self.to_embedding is not None:
            features = self.to_embedding(features)
        return F.linear(features, self.decoder.embed.weight, self.output_bias)

    def encode(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance (B, D) of q(z|x)."""
        if not self.has_latent:
            zeros = torch.zeros(tokens.size(0), self.config.latent_dim, device=tokens.device)
            return zeros, zeros.clone()
        mean, logvar = self.encoder(tokens)
        if self.posterior_bn is not None:
            mean = self.posterior_bn(mean.float())  # eval mode: the running statistics of training
        return mean, logvar

    @staticmethod
    def reparameterize(mean, logvar, generator: torch.Generator | None = None):
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + noise * torch.exp(0.5 * logvar)

    def word_dropout(self, inputs: torch.Tensor, rate: float) -> torch.Tensor:
        """Replace decoder inputs other than <bos>/pad by <unk> with probability `rate`."""
        if rate <= 0:
            return inputs
        specials = self.specials
        drop = (torch.rand(inputs.shape, device=inputs.device) < rate) & (inputs != specials.pad)
        drop &= inputs != specials.bos
        return inputs.masked_fill(drop, specials.unk)

    def reconstruction_nll(self, tokens: torch.Tensor, z: torch.Tensor, word_dropout: float = 0.0) -> torch.Tensor:
        """-log p(x|z) per sentence (B,), summed over the n+1 targets `w1 .. wn <eos>`."""
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        features, _ = self.decoder(self.word_dropout(inputs, word_dropout), z)  # (B, T, H)
        real = targets != self.specials.pad  # (B, T)
        token_nll = torch.cat([  # (N,): projection and softmax in row blocks that stay in cache
            F.cross_entropy(self.logits(part).float(), labels, reduction="none")
            for part, labels in zip(features[real].split(LOSS_ROWS), targets[real].split(LOSS_ROWS))])
        rows = torch.arange(tokens.size(0), device=tokens.device).unsqueeze(1).expand_as(targets)[real]
        return torch.zeros(tokens.size(0), device=tokens.device).index_add(0, rows, token_nll)

    def bow_nll(self, tokens: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """-sum over the targets `w1 .. wn <eos>` of log p_bow(w | z) per sentence (B,): one softmax
        over the vocabulary per code, blind to word order."""
        targets = tokens[:, 1:]
        log_probs = F.log_softmax(self.bow(z).float(), dim=-1)  # (B, V)
        real = (targets != self.specials.pad).to(log_probs.dtype)
        return -(log_probs.gather(1, targets) * real).sum(1)

    def forward(self, tokens: torch.Tensor, word_dropout: float = 0.0) -> dict[str, torch.Tensor]:
        mean, logvar = self.encode(tokens)
        z = self.reparameterize(mean, logvar)
        rec = self.reconstruction_nll(tokens, z, word_dropout)
        out = {"rec": rec, "mean": mean, "logvar": logvar, "z": z}
        if self.bow is not None:
            out["bow"] = self.bow_nll(tokens, z)
        return out


    def tied_names(self) -> set[str]:
        """State-dict names whose tensor shares storage with an earlier name (an LM's tied input and
        output embeddings): an export stores such a tensor once (safetensors refuses shared ones)."""
        seen, tied = set(), set()
        for name, tensor in self.state_dict().items():
            key = (tensor.data_ptr(), tuple(tensor.shape))
            if key in seen and tensor.numel():
                tied.add(name)
            seen.add(key)
        return tied

