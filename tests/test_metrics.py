"""The text-VAE estimators: IW-NLL, PPL, mutual information, active units, BLEU, distinct-n."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import framed_batch
from torch.distributions import Normal

from textvae.config import DecoderConfig, EncoderConfig, ModelConfig
from textvae.losses import gaussian_kl
from textvae.metrics import (active_units, corpus_bleu, distinct_n, iw_nll, mutual_information, ppl,
                             target_tokens)
from textvae.model import VAE

pytestmark = pytest.mark.usefixtures("single_thread")

VOCAB = 30
LATENT = 4
DECODERS = ["gru", "transformer"]


def tiny_vae(decoder_type: str) -> VAE:
    """An untrained VAE whose posterior sits away from the prior (KL ~ 0.7 nats per dimension)."""
    torch.manual_seed(0)
    config = ModelConfig(
        latent_dim=LATENT, word_dropout=0.0,
        encoder=EncoderConfig(layers=1, heads=2, width=16, feedforward=32, dropout=0.0, max_positions=32),
        decoder=DecoderConfig(type=decoder_type, layers=1, hidden=16, embed_dim=16, heads=2, feedforward=32,
                              dropout=0.0, max_positions=32))
    model = VAE(config, VOCAB).eval()
    with torch.no_grad():
        model.encoder.to_posterior.weight.mul_(0.1)
        model.encoder.to_posterior.bias[:LATENT] = 1.0  # means
        model.encoder.to_posterior.bias[LATENT:] = -1.0  # log-variances
    return model


def record_codes(model: VAE, monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Make `model.reconstruction_nll` log every (tokens, z) it is asked about."""
    calls = []
    original = model.reconstruction_nll

    def recording(tokens, z, word_dropout=0.0):
        calls.append((tokens.clone(), z.clone()))
        return original(tokens, z, word_dropout)

    monkeypatch.setattr(model, "reconstruction_nll", recording)
    return calls


def log_weight(model: VAE, tokens: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x|z) + log p(z) - log q(z|x) per row, computed independently of metrics.py."""
    mean, logvar = model.encode(tokens)
    log_q = Normal(mean, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    log_p = Normal(torch.zeros_like(z), 1.0).log_prob(z).sum(-1)
    return -VAE.reconstruction_nll(model, tokens, z) + log_p - log_q  # unrecorded, even when patched


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_iw_nll_with_one_sample_is_the_elbo_of_that_code(decoder_type, monkeypatch):
    model = tiny_vae(decoder_type)
    tokens = framed_batch([3, 7, 5, 1, 9, 4], seed=0, vocab=VOCAB)
    calls = record_codes(model, monkeypatch)
    nll, elbo, rec = iw_nll(model, tokens, samples=1, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 1 and torch.equal(calls[0][0], tokens)
    z = calls[0][1]  # (B, D): the one code drawn for each sentence
    with torch.no_grad():
        expected = -log_weight(model, tokens, z)
        expected_rec = VAE.reconstruction_nll(model, tokens, z)
    torch.testing.assert_close(elbo, expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(rec, expected_rec, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(nll, elbo)


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_iw_nll_matches_independent_logsumexp_across_chunks(decoder_type, monkeypatch):
    model = tiny_vae(decoder_type)
    tokens = framed_batch([3, 7, 5, 1], seed=1, vocab=VOCAB)
    calls = record_codes(model, monkeypatch)
    nll, elbo, _ = iw_nll(model, tokens, samples=10, max_rows=12, generator=torch.Generator().manual_seed(1))
    assert len(calls) > 1  # the K codes were spread over several decoder batches
    with torch.no_grad():
        weights = torch.cat([log_weight(model, t, z).view(-1, 4) for t, z in calls])  # (K, B)
    assert weights.shape == (10, 4)
    torch.testing.assert_close(nll, -(torch.logsumexp(weights, 0) - math.log(10)), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(elbo, -weights[0], atol=1e-4, rtol=1e-5)
    assert (nll <= -weights.mean(0) + 1e-5).all()  # Jensen, for every draw


def test_single_sample_elbo_averages_to_rec_plus_analytic_kl(monkeypatch):
    model = tiny_vae("gru")
    tokens = framed_batch([3, 7, 5, 1], seed=2, vocab=VOCAB).repeat(256, 1)  # 256 independent draws per sentence
    calls = record_codes(model, monkeypatch)
    _, elbo, _ = iw_nll(model, tokens, samples=1, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        rec = VAE.reconstruction_nll(model, *calls[0])
        mean, logvar = model.encode(tokens)
    kl = gaussian_kl(mean, logvar).sum(-1)  # (B,)
    assert kl.mean() > 1.0  # the posterior is far enough from the prior for the check to mean something
    log_ratio = elbo - rec  # log q(z|x) - log p(z): its expectation under q is the KL
    standard_error = log_ratio.std() / math.sqrt(len(log_ratio))
    assert abs(log_ratio.mean() - kl.mean()) < 4 * standard_error + 1e-3


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_iw_bound_tightens_as_samples_grow(decoder_type):
    model = tiny_vae(decoder_type)
    tokens = framed_batch([3, 7, 5, 1, 9, 4], seed=3, vocab=VOCAB).repeat(8, 1)  # 48 rows: averages over many draws
    averages = {}
    elbos = []
    for samples in (1, 10, 100):
        estimates = []
        for seed in range(4):
            nll, elbo, _ = iw_nll(model, tokens, samples=samples, generator=torch.Generator().manual_seed(seed))
            estimates.append(nll.mean().item())
            elbos.append(elbo.mean().item())
        averages[samples] = sum(estimates) / len(estimates)
    elbo = sum(elbos) / len(elbos)
    # the decoder barely uses z, so the true posterior is ~ the prior and the gap is ~ the KL (~2.7 nats);
    # each average has a standard error of ~0.1 nats
    assert averages[100] < averages[10] - 0.3 < averages[1] - 0.6
    assert averages[100] < elbo - 1.0
    assert averages[1] == pytest.approx(elbo, abs=0.3)


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_ppl_of_an_untrained_model_is_near_the_vocabulary_size(decoder_type):
    model = tiny_vae(decoder_type)
    tokens = framed_batch([3, 7, 5, 1, 9, 4, 12, 2], seed=5, vocab=VOCAB)
    nll = iw_nll(model, tokens, samples=5, generator=torch.Generator().manual_seed(5)).nll
    perplexity = ppl(nll.sum().item(), int(target_tokens(tokens).sum()))
    assert VOCAB / 2 < perplexity < VOCAB * 2


def test_mutual_information_is_zero_for_posteriors_that_ignore_x():
    rows = 2000
    mean = torch.tensor([0.5, -1.0, 2.0]).expand(rows, 3)
    logvar = torch.tensor([-1.0, 0.0, 0.5]).expand(rows, 3)
    values = [mutual_information(mean, logvar, generator=torch.Generator().manual_seed(seed)) for seed in range(3)]
    assert all(abs(value) < 0.1 for value in values), values


def test_mutual_information_matches_the_gaussian_closed_form():
    # x ~ N(0, s^2 I), q(z|x) = N(x, v I): I(x; z) = D/2 log(1 + s^2 / v)
    rows, dim, s2, v = 3000, 2, 4.0, 0.5
    generator = torch.Generator().manual_seed(6)
    mean = math.sqrt(s2) * torch.randn(rows, dim, generator=generator, dtype=torch.float64)
    logvar = torch.full((rows, dim), math.log(v), dtype=torch.float64)
    exact = dim / 2 * math.log(1 + s2 / v)  # 2.197 nats
    estimate = mutual_information(mean, logvar, chunk=700, generator=generator)
    assert estimate == pytest.approx(exact, abs=0.12)
    # a noisier channel carries less information
    noisier = mutual_information(mean, torch.full_like(logvar, math.log(4.0)), generator=generator)
    assert noisier == pytest.approx(dim / 2 * math.log(2.0), abs=0.12)


def test_mutual_information_is_at_most_the_mean_kl():
    for seed in range(4):
        generator = torch.Generator().manual_seed(seed)
        mean = (0.5 + seed) * torch.randn(500, 5, generator=generator)
        logvar = torch.randn(500, 5, generator=generator) - 1.0
        mi = mutual_information(mean, logvar, generator=generator)
        kl = gaussian_kl(mean, logvar).sum(-1).mean().item()
        assert 0.0 < mi <= kl, (seed, mi, kl)


def test_mutual_information_saturates_at_log_rows():
    # posteriors that never overlap identify their row exactly: the aggregate over N rows caps MI at log N
    rows, dim = 400, 3
    mean = 100.0 * torch.randn(rows, dim, generator=torch.Generator().manual_seed(9))
    logvar = torch.full_like(mean, -4.0)
    estimate = mutual_information(mean, logvar, generator=torch.Generator().manual_seed(10))
    assert estimate == pytest.approx(math.log(rows), abs=4 * math.sqrt(dim / 2 / rows))  # one draw per row
    assert gaussian_kl(mean, logvar).sum(-1).mean() > 1000 * estimate


def test_active_units():
    pattern = torch.tensor([1.0, -1.0] * 50)  # variance ~1 over 100 sentences
    mean = torch.stack([
        pattern,                      # active
        0.03 * pattern,               # variance ~0.0009: inactive
        0.3 * pattern + 5.0,          # variance ~0.09: active, whatever its offset
        torch.full((100,), 3.0),      # constant: inactive
        0.05 * pattern,               # variance ~0.0025: inactive
    ], dim=1)
    assert active_units(mean) == 2
    assert active_units(mean, threshold=0.001) == 3
    assert active_units(torch.zeros(10, 7)) == 0


def test_distinct_n():
    sentences = ["a b c", "a b d", "e"]
    assert distinct_n(sentences, 1) == pytest.approx(5 / 7)  # a b c a b d e
    assert distinct_n(sentences, 2) == pytest.approx(3 / 4)  # ab bc ab bd
    assert distinct_n(["x x x x"], 1) == pytest.approx(1 / 4)
    assert distinct_n(["x y", "y x"], 2) == 1.0
    assert distinct_n(["one", "two"], 2) == 0.0  # no bigrams at all
    assert distinct_n([], 1) == 0.0



def test_corpus_bleu():
    references = ["the cat sat on the mat today", "a dog ran across the big green field"]
    assert corpus_bleu(references, references) == pytest.approx(100.0)
    close = corpus_bleu(["the cat sat on the mat yesterday", "a dog ran across the big green field"], references)
    far = corpus_bleu(["a cat is on a mat today", "the dog walked over the big field"], references)
    assert 0.0 <= far < close < 100.0
    assert corpus_bleu(["x y z w v", "u t s r q"], references) == 0.0
