"""Decoding from codes: greedy, sampling filters, beam search, stopping, seeds and the transformer KV cache."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import framed_batch

from textvae.config import DecoderConfig, EncoderConfig, ModelConfig
from textvae.generate import decode_codes, filter_logits
from textvae.model import VAE
from textvae.tokenizer import BOS_ID, EOS_ID, PAD_ID

pytestmark = pytest.mark.usefixtures("single_thread")

VOCAB = 40
LATENT = 8
DECODERS = ["gru", "transformer"]
LENGTHS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 2, 5, 8, 13]


def words(tokens: torch.Tensor) -> list[list[int]]:
    """The ids between <bos> and <eos> of each framed row."""
    return [row[1: row.index(EOS_ID)] for row in tokens.tolist()]


class Memorised:
    """A tiny VAE whose decoder learned 16 sentences of lengths 1-13, one fixed code each."""

    def __init__(self, decoder_type: str):
        torch.manual_seed(0)
        config = ModelConfig(
            latent_dim=LATENT, word_dropout=0.0,
            encoder=EncoderConfig(layers=1, heads=2, width=32, feedforward=64, dropout=0.0, max_positions=64),
            decoder=DecoderConfig(type=decoder_type, layers=2, hidden=32, embed_dim=24, heads=2, feedforward=64,
                                  dropout=0.0, max_positions=64))
        self.model = VAE(config, VOCAB).train()
        self.tokens = framed_batch(LENGTHS, seed=3, vocab=VOCAB)
        generator = torch.Generator().manual_seed(1)
        self.codes = torch.randn(len(LENGTHS), LATENT, generator=generator)
        optimizer = torch.optim.Adam(self.model.decoder.parameters(), lr=1e-2)
        for _ in range(1000):
            optimizer.zero_grad()
            rec = self.model.reconstruction_nll(self.tokens, self.codes)
            rec.mean().backward()
            optimizer.step()
            if rec.max().item() < 0.3:  # every token's probability > 0.74: greedy recovers each sentence
                break
        self.model.eval()
        with torch.no_grad():
            assert self.model.reconstruction_nll(self.tokens, self.codes).max().item() < math.log(2)
        # codes away from the training ones: outputs of varied length, the next token uncertain
        self.other_codes = torch.randn(32, LATENT, generator=generator)


_MEMORISED: dict[str, Memorised] = {}


@pytest.fixture(params=DECODERS)
def memorised(request) -> Memorised:
    if request.param not in _MEMORISED:
        _MEMORISED[request.param] = Memorised(request.param)
    return _MEMORISED[request.param]


def reference_greedy(model: VAE, z: torch.Tensor, max_length: int) -> list[list[int]]:
    """Greedy decoding one code at a time, re-running the full teacher-forcing forward each step."""
    outputs = []
    with torch.no_grad():
        for code in z:
            prefix = [BOS_ID]
            while len(prefix) - 1 < max_length:
                features, _ = model.decoder(torch.tensor([prefix]), code[None])
                token = int(model.logits(features[0, -1]).argmax())
                if token == EOS_ID:
                    break
                prefix.append(token)
            outputs.append(prefix[1:])
    return outputs


def test_greedy_reproduces_memorised_sentences(memorised):
    out = decode_codes(memorised.model, memorised.codes, "greedy", max_length=20)
    assert out == words(memorised.tokens)
    # each row stopped at its own <eos>: lengths 1 .. 13 in one batch
    assert [len(ids) for ids in out] == LENGTHS


def test_beam_reproduces_memorised_sentences(memorised):
    out = decode_codes(memorised.model, memorised.codes, "beam", max_length=20, beam_size=3)
    assert out == words(memorised.tokens)


def test_greedy_matches_step_free_reference_and_is_deterministic(memorised):
    z = memorised.other_codes
    out = decode_codes(memorised.model, z, "greedy", max_length=16)
    assert out == reference_greedy(memorised.model, z, max_length=16)
    assert decode_codes(memorised.model, z.clone(), "greedy", max_length=16) == out
    lengths = [len(ids) for ids in out]
    assert len(set(lengths)) > 3  # rows finish at different steps, so the batch shrinks as it goes
    # decoding each code alone gives the same as decoding them together
    assert [decode_codes(memorised.model, code[None], "greedy", max_length=16)[0] for code in z[:8]] == out[:8]


def test_max_length_truncates_and_stops_each_row(memorised):
    z = memorised.other_codes
    full = decode_codes(memorised.model, z, "greedy", max_length=30)
    short = decode_codes(memorised.model, z, "greedy", max_length=4)
    for long_ids, short_ids in zip(full, short):
        assert len(short_ids) <= 4
        # the first 4 decoding steps are the same; a row that had not stopped by then is cut at 4
        expected = long_ids[:4]
        assert short_ids == expected
    assert any(len(ids) > 4 for ids in full) and any(len(ids) < 4 for ids in full)
    assert all(EOS_ID not in ids for ids in full)


def test_beam_size_one_is_greedy(memorised):
    z = memorised.other_codes
    greedy = decode_codes(memorised.model, z, "greedy", max_length=16)
    assert decode_codes(memorised.model, z, "beam", max_length=16, beam_size=1) == greedy


def test_top_k_one_sampling_is_greedy(memorised):
    z = memorised.other_codes
    greedy = decode_codes(memorised.model, z, "greedy", max_length=16)
    generator = torch.Generator().manual_seed(0)
    for temperature in (1.0, 3.0):
        sampled = decode_codes(memorised.model, z, "sample", max_length=16, top_k=1, temperature=temperature,
                               generator=generator)
        assert sampled == greedy


def test_same_seed_same_samples(memorised):
    z = memorised.other_codes

    def sample(seed: int) -> list[list[int]]:
        return decode_codes(memorised.model, z, "sample", max_length=16, temperature=1.5,
                            generator=torch.Generator().manual_seed(seed))

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first
    assert first != decode_codes(memorised.model, z, "greedy", max_length=16)  # it does sample


def test_top_p_sampling_stays_in_the_nucleus(memorised):
    """With top_p tiny only the most likely token survives, so sampling is greedy; with top_p=1 it is not."""
    z = memorised.other_codes
    greedy = decode_codes(memorised.model, z, "greedy", max_length=16)
    generator = torch.Generator().manual_seed(3)
    assert decode_codes(memorised.model, z, "sample", max_length=16, top_p=1e-6, temperature=2.0,
                        generator=generator) == greedy
    assert decode_codes(memorised.model, z, "sample", max_length=16, top_p=1.0, temperature=2.0,
                        generator=generator) != greedy


def test_filter_logits_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3],   # sorted: 0.5, 0.3, 0.15, 0.05
                          [0.3, 0.05, 0.15, 0.5]])
    logits = probs.log()
    cases = {  # top_p -> tokens kept per row (the smallest set whose mass reaches top_p)
        0.3: [{1}, {3}],
        0.5: [{1}, {3}],
        0.6: [{1, 3}, {3, 0}],
        0.75: [{1, 3}, {3, 0}],
        0.85: [{1, 3, 2}, {3, 0, 2}],
        0.97: [{0, 1, 2, 3}, {0, 1, 2, 3}],
        1.0: [{0, 1, 2, 3}, {0, 1, 2, 3}],
    }
    for top_p, kept in cases.items():
        filtered = filter_logits(logits, top_k=None, top_p=top_p)
        for row in range(2):
            survivors = {i for i in range(4) if torch.isfinite(filtered[row, i])}
            assert survivors == kept[row], (top_p, row, survivors)
            # survivors keep their logits, so renormalising gives the nucleus distribution
            assert torch.equal(filtered[row, list(survivors)], logits[row, list(survivors)])


def test_filter_logits_top_k_keeps_k():
    logits = torch.tensor([[1.0, 4.0, -2.0, 3.0, 0.5, 2.0],
                           [0.0, -1.0, 5.0, 2.5, 3.5, -3.0]])
    for k, kept in {1: [{1}, {2}], 2: [{1, 3}, {2, 4}], 4: [{1, 3, 5, 0}, {2, 4, 3, 0}]}.items():
        filtered = filter_logits(logits, top_k=k, top_p=None)
        for row in range(2):
            assert {i for i in range(6) if torch.isfinite(filtered[row, i])} == kept[row]
    assert torch.equal(filter_logits(logits, top_k=None, top_p=None), logits)
    assert torch.equal(filter_logits(logits, top_k=6, top_p=1.0), logits)
    # both: top_k first, then the nucleus of what is left
    both = filter_logits(torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log(), top_k=3, top_p=0.7)
    assert torch.isfinite(both[0]).tolist() == [True, True, False, False]


def test_transformer_kv_cache_matches_uncached():
    if "transformer" not in _MEMORISED:
        _MEMORISED["transformer"] = Memorised("transformer")
    memorised = _MEMORISED["transformer"]
    model = memorised.model
    for z in (memorised.codes, memorised.other_codes):
        for strategy, options in (("greedy", {}), ("beam", {"beam_size": 3}), ("beam", {"beam_size": 1})):
            cached = decode_codes(model, z, strategy, max_length=16, use_cache=True, **options)
            uncached = decode_codes(model, z, strategy, max_length=16, use_cache=False, **options)
            assert cached == uncached, (strategy, options)
        samples = [decode_codes(model, z, "sample", max_length=16, temperature=1.5, use_cache=use_cache,
                                generator=torch.Generator().manual_seed(11)) for use_cache in (True, False)]
        assert samples[0] == samples[1]
    # rows finished at different steps, so the cache was reordered along the way
    assert len({len(ids) for ids in decode_codes(model, memorised.other_codes, "greedy", max_length=16)}) > 3


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_outputs_never_contain_pad_or_bos(memorised, strategy):
    """Even a model that ranks <pad>/<bos> first never generates them (nor silently drops a step)."""
    model = copy.deepcopy(memorised.model)
    with torch.no_grad():
        model.output_bias[PAD_ID] += 30.0
        model.output_bias[BOS_ID] += 29.0
        model.output_bias[EOS_ID] -= 1e4  # no row ends early, so every output must be max_length long
        features, _ = model.decoder.step(torch.full((32,), BOS_ID), model.decoder.start(memorised.other_codes))
    assert set(model.logits(features).topk(2).indices.flatten().tolist()) == {PAD_ID, BOS_ID}
    out = decode_codes(model, memorised.other_codes, strategy, max_length=12, beam_size=2,
                       generator=torch.Generator().manual_seed(0))
    assert all(PAD_ID not in ids and BOS_ID not in ids and EOS_ID not in ids for ids in out)
    assert [len(ids) for ids in out] == [12] * len(out)
