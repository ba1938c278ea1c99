"""Batched decoding from latent codes: greedy, sampling (temperature, top-k, top-p), beam search.

All rows of a batch decode together; a row stops at `<eos>` or `max_length`, and finished rows
are dropped from the batch so the remaining ones do not pay for them. Both decoders share the
`start` / `step` / `reorder` interface of model.py; the transformer reuses cached keys and
values unless `use_cache=False`. Beam search keeps `beam_size` hypotheses per code, ranks
finished ones by log-probability per token (so short outputs are not favoured), and with
`beam_size=1` is exactly greedy. Special ids are the model's (`VAE.specials`: 0..3 for its own
vocabulary, a pretrained decoder's LM's otherwise); <pad> is never generated, nor is <bos> unless
it is also the <eos> (GPT-2).
"""

from __future__ import annotations

import torch

from textvae.model import VAE

STRATEGIES = ("greedy", "sample", "beam")


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Mask all but the `top_k` most likely tokens, then all outside the `top_p` nucleus."""
    if top_k is not None and top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        probs = logits.softmax(-1)
        # The nucleus is usually a few dozen tokens: rank only the top k, growing k until every
        # row's nucleus fits, instead of sorting the whole vocabulary at every step.
        vocab, k = logits.size(-1), 64
        while True:
            k = min(k, vocab)
            top_probs, order = probs.topk(k, dim=-1)  # (B, k), sorted
            if k == vocab or bool((top_probs.sum(-1) >= top_p).all()):
                break
            k *= 4
        # keep a token while the tokens ranked above it cover less than top_p (the first always stays)
        keep_sorted = top_probs.cumsum(-1) - top_probs < top_p
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, keep_sorted)
        logits = logits.masked_fill(~keep, float("-inf"))
    return logits


@torch.no_grad()
def decode_codes(model: VAE, z: torch.Tensor, strategy: str = "greedy", max_length: int = 50,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 beam_size: int = 4, generator: torch.Generator | None = None,
                 use_cache: bool = True) -> list[list[int]]:
    """Token ids (without <bos>, up to and excluding <eos>) for each code in `z` (B, D)."""
    if strategy == "beam":
        return _beam_search(model, z, beam_size, max_length, use_cache)
    decoder, specials = model.decoder, model.specials
    never = never_generated(model)  # fixed for the whole decode, not rebuilt every step
    batch = z.size(0)
    state = decoder.start(z)
    token = torch.full((batch,), specials.bos, dtype=torch.long, device=z.device)
    alive = torch.arange(batch, device=z.device)  # rows of the full batch still decoding
    output = torch.full((batch, max_length), specials.pad, dtype=torch.long, device=z.device)
    for position in range(max_length):
        features, state = decoder.step(token, state, use_cache=use_cache)
        logits = model.logits(features).float()  # (A, V)
        logits[:, never] = float("-inf")
        if strategy == "greedy":
            token = logits.argmax(-1)
        else:
            logits = filter_logits(logits / max(temperature, 1e-6), top_k, top_p)
            token = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
        output[alive, position] = token
        running = token != specials.eos
        if not bool(running.all()):
            if not bool(running.any()):
                break
            keep = running.nonzero().squeeze(1)
            alive, token, state = alive[keep], token[keep], decoder.reorder(state, keep)
    return [_strip(row, specials) for row in output.tolist()]


def never_generated(model: VAE) -> list[int]:
    """<pad>, and <bos> unless it doubles as <eos>."""
    specials = model.specials
    return [specials.pad] + ([specials.bos] if specials.bos != specials.eos else [])


def _strip(ids: list[int], specials) -> list[int]:
    ids = [i for i in ids if i != specials.pad]
    return ids[: ids.index(specials.eos)] if specials.eos in ids else ids


def _beam_search(model: VAE, z: torch.Tensor, beam_size: int, max_length: int, use_cache: bool) -> list[list[int]]:
    decoder, specials = model.decoder, model.specials
    never = never_generated(model)  # fixed for the whole decode, not rebuilt every step
    batch, device = z.size(0), z.device
    rows = batch * beam_size
    state = decoder.start(z.repeat_interleave(beam_size, dim=0))
    token = torch.full((rows,), specials.bos, dtype=torch.long, device=device)
    scores = torch.full((batch, beam_size), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    history = torch.full((rows, 0), specials.pad, dtype=torch.long, device=device)
    lengths = torch.zeros(rows, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    for _ in range(max_length):
        features, state = decoder.step(token, state, use_cache=use_cache)
        logits = model.logits(features).float()
        logits[:, never] = float("-inf")
        logprobs = logits.log_softmax(-1)  # (R, V)
        vocab = logprobs.size(-1)
        # A finished hypothesis only extends with padding, at no cost.
        logprobs[finished] = float("-inf")
        logprobs[finished, specials.pad] = 0.0
        candidates = (scores.view(rows, 1) + logprobs).view(batch, beam_size * vocab)
        scores, flat = candidates.topk(beam_size, dim=-1)  # (B, beam)
        source = (flat // vocab + torch.arange(batch, device=device).unsqueeze(1) * beam_size).view(-1)  # (R,)
        token = (flat % vocab).view(-1)
        history = torch.cat([history[source], token.unsqueeze(1)], dim=1)
        was_finished = finished[source]
        lengths = lengths[source] + (~was_finished).float()
        finished = was_finished | (token == specials.eos)
        state = decoder.reorder(state, source)
        if bool(finished.all()):
            break
    normalised = (scores.view(-1) / lengths.clamp_min(1)).view(batch, beam_size)
    best = normalised.argmax(-1) + torch.arange(batch, device=device) * beam_size
    return [_strip(row, specials) for row in history[best].tolist()]
