"""The Python API (`TextVAE`) on models of both decoders trained through the CLI."""

from __future__ import annotations

import logging
import random

import pytest
import torch

from textvae.api import TextVAE
from textvae.config import Config, DataConfig, DecoderConfig, EncoderConfig, ModelConfig
from textvae.errors import UserError
from textvae.model import VAE
from textvae.tokenizer import EOS_ID, UNK_ID, encode_batch, frame, length_batches, train_tokenizer

DECODERS = ["gru_run", "transformer_run"]
SENTENCES = ["the cat saw the ball", "a small bird found a red car yesterday", "my sister called her friend again",
             "the teacher watched the river at night"]
STRATEGIES = [
    {"strategy": "greedy"},
    {"strategy": "sample"},
    {"strategy": "sample", "temperature": 0.7},
    {"strategy": "sample", "top_k": 5},
    {"strategy": "sample", "top_p": 0.9},
    {"strategy": "sample", "temperature": 1.3, "top_k": 20, "top_p": 0.95},
    {"strategy": "beam", "beam_size": 3},
]


@pytest.fixture(scope="module", params=DECODERS)
def vae(request) -> TextVAE:
    return TextVAE.from_pretrained(request.getfixturevalue(request.param))


@pytest.fixture(scope="module")
def gru_vae(gru_run) -> TextVAE:
    return TextVAE.from_pretrained(gru_run)


def known_words(vae: TextVAE, sentence: str) -> bool:
    vocab = vae.tokenizer.get_vocab()
    return all(word in vocab for word in sentence.split())


def test_loads_the_trained_decoder(request):
    for name, decoder in (("gru_run", "gru"), ("transformer_run", "transformer")):
        loaded = TextVAE.from_pretrained(request.getfixturevalue(name))
        assert loaded.config.model.decoder.type == decoder
        assert loaded.latent_dim == 8 and not loaded.model.training


def test_sample_is_seeded(vae):
    samples = vae.sample(n=20, seed=0)
    assert len(samples) == 20 and all(isinstance(s, str) for s in samples)
    assert all(known_words(vae, s) for s in samples)
    assert vae.sample(n=20, seed=0) == samples
    assert vae.sample(n=20, seed=1) != samples
    # Batching must not change what a seed produces for the first batch.
    assert vae.sample(n=20, seed=0, batch_size=20) == samples


@pytest.mark.parametrize("decoding", STRATEGIES, ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_every_strategy_runs(vae, decoding):
    samples = vae.sample(n=6, seed=3, max_length=12, **decoding)
    assert len(samples) == 6 and all(isinstance(s, str) for s in samples)
    assert all(len(s.split()) <= 12 and known_words(vae, s) for s in samples)
    assert vae.sample(n=6, seed=3, max_length=12, **decoding) == samples


def test_degenerate_settings_equal_greedy(vae):
    z = torch.randn(8, vae.latent_dim, generator=torch.Generator().manual_seed(0))
    greedy = vae.decode(z, strategy="greedy")
    assert vae.decode(z, strategy="greedy") == greedy
    assert vae.decode(z, strategy="sample", top_k=1, seed=5) == greedy
    assert vae.decode(z, strategy="sample", top_p=1e-6, seed=5) == greedy
    assert vae.decode(z, strategy="beam", beam_size=1) == greedy
    assert vae.decode(z, strategy="greedy", use_cache=False) == greedy


def test_encode_returns_posterior_means(vae):
    codes = vae.encode(SENTENCES)
    assert codes.shape == (len(SENTENCES), vae.latent_dim) and codes.dtype == torch.float32
    torch.testing.assert_close(vae.encode(SENTENCES), codes, rtol=0, atol=0)
    # Means do not depend on the other sentences of the batch (padding is masked).
    torch.testing.assert_close(vae.encode(SENTENCES[:1])[0], codes[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vae.encode(SENTENCES[::-1]), codes.flip(0), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        mean, _ = vae.model.encode(next(length_batches(vae.tokenize(SENTENCES[:1]), 1))[1])
    torch.testing.assert_close(mean[0], codes[0], rtol=1e-5, atol=1e-5)


def test_encode_sample_draws_from_posterior(vae):
    means = vae.encode(SENTENCES)
    drawn = vae.encode(SENTENCES, sample=True, seed=0)
    assert drawn.shape == means.shape
    assert not torch.allclose(drawn, means)
    torch.testing.assert_close(vae.encode(SENTENCES, sample=True, seed=0), drawn, rtol=0, atol=0)
    assert not torch.allclose(vae.encode(SENTENCES, sample=True, seed=1), drawn)
    # Many draws average to the posterior mean.
    many = vae.encode(SENTENCES[:1] * 2000, sample=True, seed=2)
    torch.testing.assert_close(many.mean(0), means[0], rtol=0, atol=0.15)


def test_decode_of_encode_is_reconstruct(vae):
    reconstructions = vae.reconstruct(SENTENCES)
    assert len(reconstructions) == len(SENTENCES) and all(isinstance(s, str) for s in reconstructions)
    assert vae.decode(vae.encode(SENTENCES)) == reconstructions
    assert vae.reconstruct(SENTENCES[::-1]) == reconstructions[::-1]  # outputs stay in input order


@pytest.mark.parametrize("method", ["slerp", "linear"])
def test_interpolate_endpoints_are_reconstructions(vae, method):
    a, b = SENTENCES[0], SENTENCES[1]
    path = vae.interpolate(a, b, steps=8, method=method)
    assert len(path) == 10 and all(isinstance(s, str) for s in path)
    assert path[0] == vae.reconstruct([a])[0]
    assert path[-1] == vae.reconstruct([b])[0]
    assert len(vae.interpolate(a, b, steps=1, method=method)) == 3


def test_slerp_and_linear_paths_differ_in_the_middle(vae):
    from textvae.api import slerp

    start, end = vae.encode(SENTENCES[:2])
    t = torch.linspace(0, 1, 10)
    spherical = slerp(start, end, t)
    torch.testing.assert_close(spherical[0], start)
    torch.testing.assert_close(spherical[-1], end)
    linear = (1 - t[:, None]) * start + t[:, None] * end
    assert not torch.allclose(spherical[1:-1], linear[1:-1])


def test_score_shapes_and_tokens(vae):
    nll, tokens = vae.score(SENTENCES, iw_samples=5)
    assert nll.shape == tokens.shape == (len(SENTENCES),)
    assert nll.dtype == torch.float32 and not tokens.dtype.is_floating_point
    assert tokens.tolist() == [len(s.split()) + 1 for s in SENTENCES]
    assert torch.isfinite(nll).all() and (nll > 0).all()
    torch.testing.assert_close(vae.score(SENTENCES, iw_samples=5)[0], nll)  # fixed default seed
    reordered, _ = vae.score(SENTENCES[::-1], iw_samples=5)
    torch.testing.assert_close(reordered.flip(0), nll, rtol=0, atol=0.5)


def test_iw_bound_is_tighter_than_elbo(vae, tiny_corpus):
    sentences = tiny_corpus["valid"].read_text().splitlines()[:40]
    elbo, _ = vae.score(sentences, iw_samples=1, seed=0)
    iw, _ = vae.score(sentences, iw_samples=50, seed=0)
    assert iw.mean() <= elbo.mean() + 1e-4
    assert (iw <= elbo + 1.0).float().mean() > 0.9


def test_corpus_scores_better_than_shuffled_words(gru_vae, tiny_corpus):
    sentences = tiny_corpus["train"].read_text().splitlines()[:60]
    rng = random.Random(0)
    shuffled = []
    for sentence in sentences:
        words = sentence.split()
        while " ".join(words) == sentence:
            rng.shuffle(words)
        shuffled.append(" ".join(words))
    nll, tokens = gru_vae.score(sentences, iw_samples=5)
    nll_shuffled, tokens_shuffled = gru_vae.score(shuffled, iw_samples=5)
    assert torch.equal(tokens, tokens_shuffled)
    per_token, per_token_shuffled = nll / tokens, nll_shuffled / tokens_shuffled
    assert per_token.mean() + 0.5 < per_token_shuffled.mean()
    assert (per_token < per_token_shuffled).float().mean() > 0.9


def test_save_pretrained_round_trip(vae, tmp_path):
    target = tmp_path / "nested" / "copy"
    assert vae.save_pretrained(target) == target
    assert {p.name for p in target.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                   "tokenizer_config.json"}
    assert [p.name for p in target.parent.iterdir()] == ["copy"]  # no temporary directories left
    loaded = TextVAE.from_pretrained(target)
    assert loaded.config == vae.config and loaded.extra == vae.extra
    torch.testing.assert_close(loaded.encode(SENTENCES), vae.encode(SENTENCES), rtol=0, atol=0)
    torch.testing.assert_close(loaded.score(SENTENCES, iw_samples=3)[0], vae.score(SENTENCES, iw_samples=3)[0])
    assert loaded.sample(n=5, seed=0) == vae.sample(n=5, seed=0)
    vae.save_pretrained(target)  # saving over an existing export replaces it
    torch.testing.assert_close(TextVAE.from_pretrained(target).encode(SENTENCES), vae.encode(SENTENCES))


@pytest.fixture
def textvae_log(caplog):
    """caplog attached to the 'textvae' logger itself (the CLI turns off its propagation)."""
    logger = logging.getLogger("textvae")
    propagate = logger.propagate
    logger.addHandler(caplog.handler)
    logger.propagate = False  # each record once, whether or not the root logger would pass it on
    caplog.set_level(logging.WARNING, logger="textvae")
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.propagate = propagate


def test_unknown_words_warn_and_map_to_unk(vae, textvae_log):
    sentence = "the cat saw the zyzzyva"
    assert "zyzzyva" not in vae.tokenizer.get_vocab()
    codes = vae.encode([sentence])
    warnings = [r for r in textvae_log.records if r.levelno == logging.WARNING and r.name == "textvae"]
    assert len(warnings) == 1 and "unknown" in warnings[0].getMessage() and "<unk>" in warnings[0].getMessage()
    assert vae.tokenize([sentence])[0][-2] == UNK_ID
    torch.testing.assert_close(codes, vae.encode(["the cat saw the <unk>"]), rtol=0, atol=0)
    textvae_log.clear()
    vae.encode(SENTENCES)
    assert not [r for r in textvae_log.records if r.levelno >= logging.WARNING]  # known words: no warning


def test_bf16_precision_runs_every_operation_close_to_float32(vae, tmp_path, cpu_bf16):
    path = tmp_path / "model"
    vae.save_pretrained(path)
    fast = TextVAE.from_pretrained(path, precision="bf16")
    assert fast.precision == "bf16" and vae.precision == "32"
    codes, fast_codes = vae.encode(SENTENCES), fast.encode(SENTENCES)
    assert fast_codes.dtype == torch.float32
    torch.testing.assert_close(fast_codes, codes, atol=0.05, rtol=0.05)
    nll, _ = vae.score(SENTENCES, iw_samples=5)
    fast_nll, _ = fast.score(SENTENCES, iw_samples=5)
    assert fast_nll.dtype == torch.float32
    torch.testing.assert_close(fast_nll, nll, atol=0.0, rtol=0.02)  # the same codes, bf16 products
    samples = fast.sample(6, strategy="sample", top_p=0.9, seed=0)
    assert len(samples) == 6 and samples == fast.sample(6, strategy="sample", top_p=0.9, seed=0)
    greedy, fast_greedy = vae.reconstruct(SENTENCES), fast.reconstruct(SENTENCES)
    agree = sum(a == b for a, b in zip(greedy, fast_greedy))
    assert agree >= len(SENTENCES) // 2, (greedy, fast_greedy)  # near-ties may flip a word, not most outputs


def test_unknown_precision_is_refused(gru_run):
    with pytest.raises(UserError, match="--precision must be 32 or bf16, got 'fp16'"):
        TextVAE.from_pretrained(gru_run, precision="fp16")


def untrained_vae(decoder_type: str, encoder_positions: int = 12, decoder_positions: int = 8) -> TextVAE:
    """A tiny untrained model with short position tables, over the words w0 .. w19."""
    tokenizer = train_tokenizer([" ".join(f"w{i}" for i in range(20))], "word")
    model = ModelConfig(latent_dim=4, encoder=EncoderConfig(layers=1, heads=2, width=16, feedforward=32,
                                                            max_positions=encoder_positions),
                        decoder=DecoderConfig(type=decoder_type, layers=1, hidden=16, embed_dim=16, heads=2,
                                              feedforward=32, max_positions=decoder_positions))
    torch.manual_seed(0)
    return TextVAE(VAE(model, tokenizer.get_vocab_size()), tokenizer, Config(data=DataConfig(max_length=4), model=model))


@pytest.mark.parametrize("decoder_type, max_words", [("gru", 10), ("transformer", 7)])
def test_sentences_longer_than_the_model_reads_are_cut_counted_and_scored(decoder_type, max_words, textvae_log):
    # 12 encoder positions hold <bos> + 10 words + <eos>; 8 transformer decoder positions <bos> + 7 words
    vae = untrained_vae(decoder_type)
    assert vae.max_words == max_words
    sentences = [" ".join(f"w{i % 20}" for i in range(length)) for length in (3, max_words, max_words + 1, 40)]
    nll, tokens = vae.score(sentences, iw_samples=2)
    assert torch.isfinite(nll).all() and tokens.tolist() == [4, max_words + 1, max_words + 1, max_words + 1]
    warnings = [r.getMessage() for r in textvae_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"2 of 4 sentence(s) are longer than the {max_words}")
    assert vae.encode(sentences).shape == (4, 4) and len(vae.reconstruct(sentences)) == 4
    # corpus ids (what evaluation scores) go through the same cut, with the count returned
    framed = [frame(ids) for ids in encode_batch(vae.tokenizer, sentences)]
    clipped, cut = vae.clip_to_model(framed)
    assert cut == 2 and clipped == vae.tokenize(sentences)
    assert clipped[:2] == framed[:2] and clipped[3] == [*framed[3][: max_words + 1], EOS_ID]


def test_max_length_is_checked_against_a_transformer_decoder():
    vae = untrained_vae("transformer")  # 8 decoder positions: <bos> and 7 produced tokens fed back, 8 produced
    with torch.no_grad():
        vae.model.output_bias[EOS_ID] -= 1e4  # never stop early: every output is max_length tokens long
    z = torch.randn(3, 4)
    for strategy in ("greedy", "sample", "beam"):
        assert [len(s.split()) for s in vae.decode(z, strategy=strategy, max_length=8)] == [8, 8, 8]
    assert [len(s.split()) for s in vae.decode(z)] == [8, 8, 8]  # the default (50) is capped to the decoder
    for call in (lambda: vae.decode(z, max_length=9), lambda: vae.sample(n=2, max_length=9),
                 lambda: vae.reconstruct(["w1 w2"], max_length=9),
                 lambda: vae.interpolate("w1", "w2", steps=2, max_length=9)):
        with pytest.raises(UserError, match=r"^--max-length must be at most 8 for this model .* got 9$"):
            call()
    gru = untrained_vae("gru")  # a GRU has no position table: any length
    with torch.no_grad():
        gru.model.output_bias[EOS_ID] -= 1e4
    assert [len(s.split()) for s in gru.decode(z, max_length=60)] == [60, 60, 60]
