"""The VAE modules: causality, padding, z injection, word dropout, reconstruction NLL, tying, overfitting."""

from __future__ import annotations

import pytest
import torch
from conftest import framed_batch
import torch.nn.functional as F

from textvae.config import DecoderConfig, EncoderConfig, ModelConfig
from textvae.generate import decode_codes
from textvae.model import VAE
from textvae.tokenizer import BOS_ID, PAD_ID, UNK_ID

pytestmark = pytest.mark.usefixtures("single_thread")

VOCAB = 40
DECODERS = ["gru", "transformer"]


def tiny_config(decoder_type: str, latent_dim: int = 8, dropout: float = 0.0, **decoder) -> ModelConfig:
    return ModelConfig(
        latent_dim=latent_dim, word_dropout=0.0,
        encoder=EncoderConfig(layers=1, heads=2, width=32, feedforward=64, dropout=dropout, max_positions=64),
        decoder=DecoderConfig(type=decoder_type, layers=2, hidden=32, embed_dim=24, heads=2, feedforward=64,
                              dropout=dropout, max_positions=64, **decoder))


def tiny_model(decoder_type: str, seed: int = 0, **decoder) -> VAE:
    torch.manual_seed(seed)
    return VAE(tiny_config(decoder_type, **decoder), VOCAB).eval()


def decoder_logits(model: VAE, inputs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    features, _ = model.decoder(inputs, z)  # (B, T, H)
    return model.logits(features)  # (B, T, V)


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_decoder_cannot_see_future_tokens(decoder_type):
    model = tiny_model(decoder_type)
    inputs = framed_batch([10, 10, 10], seed=1, vocab=VOCAB)[:, :-1]  # (3, 11), no padding
    z = torch.randn(3, 8)
    with torch.no_grad():
        reference = decoder_logits(model, inputs, z)
        for t in range(inputs.size(1) - 1):
            changed = inputs.clone()
            changed[:, t + 1:] = (changed[:, t + 1:] - 4 + 7) % (VOCAB - 4) + 4  # every later token differs
            assert (changed[:, t + 1:] != inputs[:, t + 1:]).all()
            logits = decoder_logits(model, changed, z)
            torch.testing.assert_close(logits[:, : t + 1], reference[:, : t + 1], atol=1e-5, rtol=1e-5)
            # the change is visible from position t + 1 on, so the comparison above is not vacuous
            assert (logits[:, t + 1] - reference[:, t + 1]).abs().max() > 1e-4


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_padding_does_not_change_real_positions(decoder_type):
    model = tiny_model(decoder_type)
    lengths = [3, 9, 6, 1]
    tokens = framed_batch(lengths, seed=2, vocab=VOCAB)  # (4, 11)
    z = torch.randn(4, 8)
    with torch.no_grad():
        batched = model.reconstruction_nll(tokens, z)
        more_padding = model.reconstruction_nll(F.pad(tokens, (0, 7), value=PAD_ID), z)
        for row, length in enumerate(lengths):
            alone = model.reconstruction_nll(tokens[row: row + 1, : length + 2], z[row: row + 1])
            torch.testing.assert_close(batched[row], alone[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(more_padding, batched, atol=1e-5, rtol=1e-5)
        # the encoder pools over real positions only, so q(z|x) ignores padding too
        mean, logvar = model.encode(tokens)
        mean_padded, logvar_padded = model.encode(F.pad(tokens, (0, 7), value=PAD_ID))
        torch.testing.assert_close(mean_padded, mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logvar_padded, logvar, atol=1e-5, rtol=1e-5)
        for row, length in enumerate(lengths):
            mean_alone, _ = model.encode(tokens[row: row + 1, : length + 2])
            torch.testing.assert_close(mean[row], mean_alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_step_by_step_decoding_equals_teacher_forcing(decoder_type):
    model = tiny_model(decoder_type)
    inputs = framed_batch([9, 9], seed=11, vocab=VOCAB)[:, :-1]  # (2, 10)
    z = torch.randn(2, 8)
    with torch.no_grad():
        full, _ = model.decoder(inputs, z)  # (B, T, H)
        for use_cache in (True, False):
            state = model.decoder.start(z)
            steps = []
            for t in range(inputs.size(1)):
                features, state = model.decoder.step(inputs[:, t], state, use_cache=use_cache)
                steps.append(features)
            torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_transformer_cache_extended_by_several_tokens_at_once():
    """A cached prefix followed by a multi-token chunk must match one full pass (causal mask aligned to the end)."""
    model = tiny_model("transformer")
    inputs = framed_batch([9, 9], seed=12, vocab=VOCAB)[:, :-1]  # (2, 10)
    z = torch.randn(2, 8)
    with torch.no_grad():
        full, _ = model.decoder(inputs, z)
        state = model.decoder.start(z)
        first, state = model.decoder(inputs[:, :4], z, state, use_cache=True)
        second, state = model.decoder(inputs[:, 4:], z, state, use_cache=True)
    torch.testing.assert_close(first, full[:, :4], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second, full[:, 4:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_inputs_longer_than_the_position_tables_are_refused_not_cut(decoder_type):
    # Cutting is the tokeniser's job (TextVAE.clip_to_model, counted and warned); here it would be silent.
    model = tiny_model(decoder_type)  # 64 encoder positions, and 64 for the transformer decoder
    fits = framed_batch([62], seed=13, vocab=VOCAB)  # (1, 64)
    model.encode(fits)
    model.reconstruction_nll(fits, torch.randn(1, 8))
    with pytest.raises(ValueError, match="model.encoder.max_positions=64"):
        model.encode(framed_batch([63], seed=13, vocab=VOCAB))


Z_INJECTIONS = [
    ("gru", {}),
    ("gru", {"z_init_hidden": True, "z_concat_input": False}),
    ("gru", {"z_init_hidden": False, "z_concat_input": True}),
    ("gru", {"z_init_hidden": False, "z_concat_input": False, "z_skip": True}),
    ("transformer", {}),
    ("transformer", {"z_cross_attention": True, "z_add_input": False}),
    ("transformer", {"z_cross_attention": False, "z_add_input": True}),
]


@pytest.mark.parametrize(("decoder_type", "switches"), Z_INJECTIONS,
                         ids=[f"{t}-{'-'.join(k for k, v in s.items() if v) or 'all'}" for t, s in Z_INJECTIONS])
def test_changing_z_changes_the_output_distribution(decoder_type, switches):
    model = tiny_model(decoder_type, **switches)
    inputs = framed_batch([6, 6], seed=3, vocab=VOCAB)[:, :-1]
    z = torch.randn(2, 8)
    with torch.no_grad():
        same = decoder_logits(model, inputs, z).log_softmax(-1)
        again = decoder_logits(model, inputs, z.clone()).log_softmax(-1)
        other = decoder_logits(model, inputs, z + torch.randn(2, 8)).log_softmax(-1)
    torch.testing.assert_close(again, same)
    # KL between next-token distributions at every position, including the first (just after <bos>)
    divergence = (same.exp() * (same - other)).sum(-1)  # (B, T)
    assert (divergence > 1e-7).all(), divergence


def test_disabled_injections_remove_their_parameters():
    gru = tiny_model("gru", z_init_hidden=False, z_concat_input=True)
    assert gru.decoder.z_to_hidden is None
    assert gru.decoder.gru.input_size == 24 + 8
    gru = tiny_model("gru", z_init_hidden=True, z_concat_input=False)
    assert gru.decoder.gru.input_size == 24
    assert gru.decoder.z_to_output is None  # z_skip is off by default
    gru = tiny_model("gru", z_init_hidden=False, z_concat_input=False, z_skip=True)
    assert gru.decoder.z_to_hidden is None and gru.decoder.gru.input_size == 24
    assert gru.decoder.z_to_output.out_features == gru.decoder.width
    transformer = tiny_model("transformer", z_cross_attention=False, z_add_input=True)
    assert transformer.decoder.z_to_memory is None
    assert not any(block.cross for block in transformer.decoder.blocks)
    transformer = tiny_model("transformer", z_cross_attention=True, z_add_input=False)
    assert transformer.decoder.z_to_input is None


def test_word_dropout_rate_and_untouched_positions():
    model = tiny_model("gru")
    lengths = [int(n) for n in torch.randint(1, 30, (1000,), generator=torch.Generator().manual_seed(4))]
    inputs = framed_batch(lengths, seed=4, vocab=VOCAB)[:, :-1]  # decoder inputs: <bos> w1 .. wn <eos> pad ...
    eligible = (inputs != PAD_ID) & (inputs != BOS_ID)
    for rate in (0.1, 0.25, 0.6):
        torch.manual_seed(5)
        dropped = model.word_dropout(inputs, rate)
        changed = dropped != inputs
        assert torch.equal(dropped[changed], torch.full_like(dropped[changed], UNK_ID))
        assert not changed[~eligible].any()  # <bos> and padding are never replaced
        assert torch.equal(dropped[:, 0], torch.full_like(dropped[:, 0], BOS_ID))
        measured = changed.sum().item() / eligible.sum().item()  # ~15,000 eligible tokens: sd < 0.005
        assert abs(measured - rate) < 0.02, (rate, measured)
    assert torch.equal(model.word_dropout(inputs, 0.0), inputs)
    everything = model.word_dropout(inputs, 1.0)
    assert torch.equal(everything[eligible], torch.full_like(everything[eligible], UNK_ID))
    assert torch.equal(everything[~eligible], inputs[~eligible])


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_word_dropout_in_reconstruction_changes_inputs_not_targets(decoder_type):
    model = tiny_model(decoder_type)
    tokens = framed_batch([5, 8, 2], seed=6, vocab=VOCAB)
    z = torch.randn(3, 8)
    with torch.no_grad():
        all_unk = model.reconstruction_nll(tokens, z, word_dropout=1.0)
        inputs = tokens[:, :-1].clone()
        inputs[(inputs != PAD_ID) & (inputs != BOS_ID)] = UNK_ID
        logits = decoder_logits(model, inputs, z)
        expected = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], ignore_index=PAD_ID,
                                   reduction="none").sum(-1)
        torch.testing.assert_close(all_unk, expected, atol=1e-4, rtol=1e-5)
        assert not torch.allclose(all_unk, model.reconstruction_nll(tokens, z), atol=1e-4)


@pytest.mark.parametrize("loss_rows", [256, 5])  # one block, and blocks that split sentences
@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("decoder_type", DECODERS)
def test_reconstruction_nll_matches_direct_computation(decoder_type, tie, loss_rows, monkeypatch):
    monkeypatch.setattr("textvae.model.LOSS_ROWS", loss_rows)
    model = tiny_model(decoder_type, tie_embeddings=tie)
    lengths = [7, 1, 12, 4, 9]
    tokens = framed_batch(lengths, seed=7, vocab=VOCAB)  # (5, 14)
    z = torch.randn(5, 8)
    with torch.no_grad():
        rec = model.reconstruction_nll(tokens, z)
        logits = decoder_logits(model, tokens[:, :-1], z)  # (B, T, V) over every padded position
        targets = tokens[:, 1:]
        token_nll = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), reduction="none")
        mask = (targets != PAD_ID).float()
        expected = (token_nll.view_as(targets) * mask).sum(-1)
    assert rec.shape == (5,)
    assert mask.sum(-1).tolist() == [n + 1 for n in lengths]  # words plus <eos>
    torch.testing.assert_close(rec, expected, atol=1e-4, rtol=1e-5)
    # an untrained model is close to uniform: about log V nats per predicted token
    per_token = rec / torch.tensor([n + 1 for n in lengths])
    assert ((per_token - torch.log(torch.tensor(float(VOCAB)))).abs() < 1.0).all()


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_forward_returns_posterior_and_code(decoder_type):
    model = tiny_model(decoder_type)
    tokens = framed_batch([4, 6], seed=8, vocab=VOCAB)
    torch.manual_seed(0)
    out = model(tokens)
    assert out["rec"].shape == (2,) and out["mean"].shape == (2, 8) and out["logvar"].shape == (2, 8)
    torch.testing.assert_close(out["rec"], model.reconstruction_nll(tokens, out["z"]))
    assert not torch.allclose(out["z"], out["mean"])  # a sample, not the mean


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_tied_and_untied_embeddings(decoder_type):
    tied = tiny_model(decoder_type, tie_embeddings=True)
    untied = tiny_model(decoder_type, tie_embeddings=False)
    assert tied.output is None and isinstance(untied.output, torch.nn.Linear)
    tied_weights = {id(p) for p in tied.parameters()}
    assert id(tied.decoder.embed.weight) in tied_weights
    assert sum(p.numel() for p in untied.parameters()) > sum(p.numel() for p in tied.parameters())
    tokens = framed_batch([5, 3], seed=9, vocab=VOCAB)
    unused = next(i for i in range(4, VOCAB) if not (tokens == i).any())
    z = torch.randn(2, 8)
    for model, shares in ((tied, True), (untied, False)):
        model.zero_grad()
        model.reconstruction_nll(tokens, z).mean().backward()
        # a token that is never an input still gets gradient on its embedding row when that row is
        # also its output weight
        row_gradient = model.decoder.embed.weight.grad[unused].abs().sum().item()
        assert (row_gradient > 0) == shares, (shares, row_gradient)
        with torch.no_grad():
            before = decoder_logits(model, tokens[:, :-1], z)
            # a random direction: the transformer's features are LayerNorm outputs, which sum to ~0
            model.decoder.embed.weight[unused] += torch.randn(model.decoder.embed.embedding_dim)
            after = decoder_logits(model, tokens[:, :-1], z)
        moved = (after - before).abs().amax(dim=(0, 1))  # (V,)
        assert (moved[unused] > 1e-3) == shares
        others = torch.ones(VOCAB, dtype=torch.bool)
        others[unused] = False
        assert moved[others].max() < 1e-5


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_decoder_overfits_a_handful_of_sentences(decoder_type):
    torch.manual_seed(0)
    model = VAE(tiny_config(decoder_type, latent_dim=8), VOCAB).train()
    lengths = [3, 5, 7, 9, 4, 6, 8, 10]
    tokens = framed_batch(lengths, seed=10, vocab=VOCAB)
    z = torch.randn(len(lengths), 8, generator=torch.Generator().manual_seed(11))  # one fixed code each
    optimizer = torch.optim.Adam(model.decoder.parameters(), lr=1e-2)
    with torch.no_grad():
        start = model.eval().reconstruction_nll(tokens, z).mean().item()
    model.train()
    for _ in range(250):  # the GRU needs ~200 steps to get below 0.3 nats, the transformer ~70
        optimizer.zero_grad()
        model.reconstruction_nll(tokens, z).mean().backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        rec = model.reconstruction_nll(tokens, z).mean().item()
    # 8 sentences of random words start at about log(40) * 7.5 = 28 nats each
    assert start > 20 and rec < 0.3, (start, rec)
    # and each code's greedy decode is its sentence, word for word, ending with <eos>
    decoded = decode_codes(model, z, "greedy", max_length=15)
    assert decoded == [row[1: length + 1].tolist() for row, length in zip(tokens, lengths)]


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_a_model_without_latent_is_its_decoder_alone(decoder_type):
    """model.latent: none builds no encoder and no path for z into the decoder; q(z|x) = p(z), so
    the KL is 0 and the importance-weighted NLL is the decoder's own -log p(x), for any K."""
    from textvae.metrics import iw_nll

    torch.manual_seed(0)
    config = tiny_config(decoder_type)
    config = ModelConfig(**{**config.__dict__, "latent": "none"})
    model = VAE(config, VOCAB).eval()
    assert model.encoder is None
    assert not [name for name in model.state_dict() if name.startswith("encoder.") or ".z_to_" in name]
    tokens = framed_batch([3, 7, 5], seed=1)
    inputs = tokens[:, :-1]
    first, second = torch.randn(3, 8), 10 * torch.randn(3, 8)
    assert torch.equal(decoder_logits(model, inputs, first), decoder_logits(model, inputs, second))
    mean, logvar = model.encode(tokens)
    assert torch.equal(mean, torch.zeros(3, 8)) and torch.equal(logvar, torch.zeros(3, 8))
    with torch.no_grad():
        direct = F.cross_entropy(decoder_logits(model, inputs, first).transpose(1, 2), tokens[:, 1:],
                                 ignore_index=PAD_ID, reduction="none").sum(1)  # (B,)
        estimate = iw_nll(model, tokens, samples=5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(estimate.nll, direct, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(estimate.rec, direct, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(estimate.elbo, direct, rtol=1e-5, atol=1e-4)  # KL 0: the bound is tight


def test_no_latent_refuses_settings_that_need_one():
    from textvae.config import load_config
    from textvae.errors import UserError

    for flags, key in ((["--model.latent", "none", "--model.bow_weight", "1"], "model.bow_weight"),
                       (["--model.latent", "none", "--model.posterior_bn", "0.5"], "model.posterior_bn"),
                       (["--model.latent", "nothing"], "model.latent"),
                       (["--model.latent", "none", "--model.latent_dim", "0"], "model.latent_dim")):
        with pytest.raises(UserError, match=key.replace(".", r"\.")):
            load_config(overrides=flags)
