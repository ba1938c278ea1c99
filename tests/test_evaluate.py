"""textvae/evaluate.py: the scoring loop, the metric table and the latent-use metrics, checked on
models whose right answers are known (a uniform decoder, a memorised autoencoder)."""

from __future__ import annotations

import copy
import dataclasses
import math
import subprocess
import sys

import pytest
import torch
from torch.distributions import Normal

from conftest import synthetic_sentences as synthetic_lines
from textvae.api import TextVAE
from textvae.config import Config, DecoderConfig, EncoderConfig, EvalConfig, ModelConfig
from textvae.evaluate import decode_count, evaluate, latent_use, score_ids, training_sentences
from textvae.metrics import edit_distance, interpolation_smoothness, mutual_information
from textvae.tokenizer import decode_ids, encode_batch, frame, train_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

LONG = " ".join(f"w{i % 23}" for i in range(60))  # longer than the 50 tokens decoding used to stop at
SENTENCES = ["the cat saw the ball", "a dog liked the red car", "my sister found her friend again",
             "the old man watched the river at night", "a small bird chased the market", "the teacher called",
             "her friend helped the company yesterday", LONG]


def make_vae(decoder_type: str = "gru", **eval_settings) -> TextVAE:
    torch.manual_seed(0)
    tokenizer = train_tokenizer(SENTENCES, "word")
    model_config = ModelConfig(
        latent_dim=8, word_dropout=0.0,
        encoder=EncoderConfig(layers=1, heads=2, width=32, feedforward=64, dropout=0.0, max_positions=128),
        decoder=DecoderConfig(type=decoder_type, layers=1, hidden=64, embed_dim=32, heads=2, feedforward=64,
                              dropout=0.0, max_positions=128))
    config = Config(model=model_config, eval=EvalConfig(**{"iw_samples": 3, **eval_settings}))
    from textvae.model import VAE

    return TextVAE(VAE(model_config, tokenizer.get_vocab_size()), tokenizer, config)


def framed(vae: TextVAE) -> list[list[int]]:
    return [frame(ids) for ids in encode_batch(vae.tokenizer, SENTENCES)]


def uniform_prior_posterior(vae: TextVAE) -> TextVAE:
    """Zero the output layer (every token has probability 1/V) and make q(z|x) = N(0, I)."""
    with torch.no_grad():
        vae.model.output_bias.zero_()
        vae.model.decoder.embed.weight.zero_()  # tied: the output projection is zero too
        vae.model.encoder.to_posterior.weight.zero_()
        vae.model.encoder.to_posterior.bias.zero_()
    return vae


def test_uniform_model_scores_exactly_and_its_perplexity_is_the_vocabulary_size():
    vae = uniform_prior_posterior(make_vae())
    vocab = vae.tokenizer.get_vocab_size()
    ids = framed(vae)
    scores = score_ids(vae, ids, iw_samples=7)
    words = torch.tensor([len(s.split()) for s in SENTENCES], dtype=torch.float32)
    # q = p(z) makes every importance weight p(x|z) = V^-(n+1) exactly: <eos> counts, <bos> does not.
    torch.testing.assert_close(scores.tokens, words + 1)
    torch.testing.assert_close(scores.nll, (words + 1) * math.log(vocab))
    torch.testing.assert_close(scores.kl, torch.zeros(len(SENTENCES)), atol=1e-6, rtol=0)
    metrics, _ = evaluate(vae, ids, iw_samples=7)
    assert metrics["ppl"] == pytest.approx(vocab, rel=1e-5)
    assert metrics["tokens"] == int(words.sum()) + len(SENTENCES)
    assert metrics["au"] == 0


def test_scores_do_not_depend_on_order_or_batch_companions():
    vae = make_vae()
    ids = framed(vae)
    one = score_ids(vae, ids, iw_samples=1, seed=0)
    torch.testing.assert_close(score_ids(vae, ids, iw_samples=1, seed=0).nll, one.nll)
    # the posterior of a sentence is the same alone as among others (padding is masked)
    alone = score_ids(vae, ids[:1], iw_samples=1)
    torch.testing.assert_close(alone.mean[0], one.mean[0], atol=1e-5, rtol=1e-5)


def test_prior_diversity_comes_from_sampled_decodes():
    # A decoder that ignores z and is uniform: greedy decodes of any code are one and the same
    # sentence, samples are all different. distinct-n must describe the samples.
    vae = uniform_prior_posterior(make_vae(prior_samples=40, interp_pairs=0))
    metrics, _ = evaluate(vae, framed(vae), training_text=training_sentences(vae, framed(vae)), iw_samples=1)
    assert metrics["distinct_2"] > 0.5 and metrics["novel"] == 1.0
    assert metrics["distinct_1_greedy"] < 0.01 and metrics["distinct_2_greedy"] < 0.01


def test_novelty_by_hashes_equals_novelty_by_text_on_a_word_level_corpus():
    """With the word tokenizer, hashed token ids decide exactly as the text definition: samples
    against the whitespace-normalised decoded training sentences (rare training words are <unk>)."""
    import random

    training = synthetic_lines(300, seed=3) + ["the quokka saw the ball", "a dog liked the wombat yesterday"]
    tokenizer = train_tokenizer(training, "word", min_frequency=3)  # some training words become <unk>
    ids = [frame(x) for x in encode_batch(tokenizer, training)]
    decoded = {" ".join(text.split()) for text in decode_ids(tokenizer, (x[1:] for x in ids))}
    assert any("<unk>" in text for text in decoded)
    rng = random.Random(0)
    words = sorted({w for line in training for w in line.split()}) + ["<unk>", "zebra"]
    samples = []
    for _ in range(400):
        if rng.random() < 0.5:  # a training sentence as decoded, respaced
            samples.append("  ".join(rng.choice(sorted(decoded)).split()) + " ")
        else:
            samples.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 6))))
    vae = make_vae()
    vae.tokenizer = tokenizer
    novel = training_sentences(vae, ids).novel(samples)
    assert novel.tolist() == [" ".join(sample.split()) not in decoded for sample in samples]
    assert 0.3 < novel.mean() < 0.8


def test_novelty_with_a_bpe_tokenizer_compares_the_text_however_it_was_spelt_in_tokens():
    training = synthetic_lines(200, seed=4)
    tokenizer = train_tokenizer(training, "bpe", vocab_size=300)
    vae = make_vae()
    vae.tokenizer = tokenizer
    known = training_sentences(vae, [frame(x) for x in encode_batch(tokenizer, training)])
    copied = training[0]
    letters = [tokenizer.token_to_id(piece) for piece in tokenizer.encode(copied).tokens
               for piece in ([piece] if len(piece) == 1 else list(piece))]  # a non-canonical spelling
    assert letters != tokenizer.encode(copied).ids
    (spelt,) = decode_ids(tokenizer, [letters])
    assert spelt == copied
    assert known.novel([copied, spelt, copied + " again and again", copied.replace(" ", "  ", 1)]).tolist() == [
        False, False, True, True]  # spacing is part of the text a byte-level BPE encodes


@pytest.fixture(scope="module")
def memorised() -> TextVAE:
    """Encoder and decoder trained as an autoencoder (z = posterior mean) until every sentence,
    the 60-word one included, comes back exactly."""
    vae = make_vae(bleu_sentences=0, interp_pairs=6)
    model = vae.model.train()
    tokens = torch.nn.utils.rnn.pad_sequence([torch.tensor(x) for x in framed(vae)], batch_first=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(600):
        optimizer.zero_grad()
        mean, _ = model.encode(tokens)
        rec = model.reconstruction_nll(tokens, mean)
        rec.mean().backward()
        optimizer.step()
        if rec.max().item() < 0.2:
            break
    model.eval()
    return vae


def test_memorised_model_reconstructs_with_bleu_100(memorised):
    ids = framed(memorised)
    means = memorised.encode(SENTENCES)
    metrics = latent_use(memorised, ids, means)
    assert metrics["rec_bleu"] == pytest.approx(100.0)
    assert metrics["rec_exact"] == 1.0  # the 60-word sentence too: hypotheses are not cut short
    # paths between sentences the latent tells apart pass through more than one decoding
    assert metrics["interp_distinct"] >= 2 and 0 < metrics["interp_step"] <= 1


def test_reconstruction_metrics_see_a_wrong_decoding(memorised):
    ids = framed(memorised)
    means = memorised.encode(SENTENCES)
    swapped = means[[1, 0, *range(2, len(SENTENCES))]]  # two sentences get each other's code
    metrics = latent_use(memorised, ids, swapped)
    assert metrics["rec_exact"] == pytest.approx((len(SENTENCES) - 2) / len(SENTENCES))
    assert metrics["rec_bleu"] < 100.0
    assert "rec_bleu_beam" not in metrics  # eval.rec_beam 0: no beam search


def test_beam_reconstruction_metrics_score_beam_search_decodes(memorised):
    ids = framed(memorised)
    means = memorised.encode(SENTENCES)
    swapped = means[[1, 0, *range(2, len(SENTENCES))]]
    beam = copy.copy(memorised)  # the same model with eval.rec_beam 3
    beam.config = dataclasses.replace(memorised.config,
                                      eval=dataclasses.replace(memorised.config.eval, rec_beam=3, interp_pairs=0))
    right, wrong = latent_use(beam, ids, means), latent_use(beam, ids, swapped)
    assert right["rec_bleu_beam"] == pytest.approx(100.0) and right["rec_exact_beam"] == 1.0
    assert wrong["rec_exact_beam"] == pytest.approx((len(SENTENCES) - 2) / len(SENTENCES))
    assert wrong["rec_bleu_beam"] < 100.0
    assert decode_count(beam.config.eval, len(SENTENCES), with_prior=False) == 4 * len(SENTENCES)


def test_edit_distance():
    assert edit_distance("a b c".split(), "a b c".split()) == 0
    assert edit_distance("a b c".split(), "a x c".split()) == 1
    assert edit_distance("a b c".split(), "b c".split()) == 1
    assert edit_distance([], "a b".split()) == 2
    assert edit_distance("k i t t e n".split(), "s i t t i n g".split()) == 3


def test_interpolation_smoothness_on_hand_made_paths():
    stuck = [["the cat sat"] * 10]
    assert interpolation_smoothness(stuck) == (1.0, 0.0)
    jump = [["a b c d"] * 5 + ["w x y z"] * 5]  # one step of 1, eight of 0
    assert interpolation_smoothness(jump) == (2.0, pytest.approx(1 / 9))
    smooth = [["a b c d", "a b c z", "a b y z", "a x y z", "w x y z"]]  # four steps of 1/4
    assert interpolation_smoothness(smooth) == (5.0, pytest.approx(0.25))
    assert interpolation_smoothness(stuck + smooth) == (3.0, pytest.approx(1 / 13))


def test_mutual_information_matches_a_direct_pairwise_computation():
    generator = torch.Generator().manual_seed(3)
    mean = 2 * torch.randn(300, 6, generator=generator, dtype=torch.float64)
    logvar = torch.randn(300, 6, generator=generator, dtype=torch.float64) - 1
    estimate = mutual_information(mean, logvar, chunk=128, generator=torch.Generator().manual_seed(4))
    # the same draws, scored against every posterior with torch.distributions, all N x N x D at once
    z = mean + torch.randn(mean.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64) \
        * torch.exp(0.5 * logvar)
    log_q = Normal(mean.unsqueeze(0), torch.exp(0.5 * logvar).unsqueeze(0)).log_prob(z.unsqueeze(1)).sum(-1)
    aggregate = torch.logsumexp(log_q, dim=1) - math.log(len(mean))
    own = Normal(mean, torch.exp(0.5 * logvar)).entropy().sum(-1)
    assert estimate == pytest.approx(float(-own.mean() - aggregate.mean()), abs=1e-9)


def test_evaluate_command_imports_no_lightning(gru_run):
    code = ("import sys\n"
            "from textvae.cli import main\n"
            "try:\n    main(['evaluate', '--help'])\nexcept SystemExit:\n    pass\n"
            f"main(['evaluate', '--model', {str(gru_run)!r}, '--iw-samples', '1', '--split', 'valid'])\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('lightning', 'pytorch_lightning', 'lightning_fabric') or m in ('textvae.training', 'textvae.system'))\n"
            "print('LOADED', loaded)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: textvae evaluate" in result.stdout
    assert "rec_bleu" in result.stdout and "interp_distinct" in result.stdout
    assert "LOADED []" in result.stdout
