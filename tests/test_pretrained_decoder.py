"""Pretrained Hugging Face causal LMs as p(x|z) (`model.decoder.type: pretrained`).

Tiny random GPT-2 (byte-level BPE, one `<|endoftext|>` for BOS, EOS and unk, no pad: both pad and
a dedicated unk are added) and Llama (Metaspace BPE with `<unk>`, `<s>`, `</s>` and grouped-query
attention; no pad) models are built from transformers' config classes with tokenizers trained
here, saved into temporary directories and named by path, as a user would name a downloaded model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import CONFIGS, build_tiny_lm, run_cli, run_main, text_overrides, train_debug
from textvae.api import TextVAE
from textvae.config import DecoderConfig, ModelConfig
from textvae.errors import UserError
from textvae.generate import decode_codes
from textvae.metrics import iw_nll
from textvae.model import VAE
from textvae.pretrained import lm_specials, load_hf, text_tokenizer
from textvae.tokenizer import encode_batch, frame, pad_batch, special_ids

SENTENCES = ["the cat saw the ball", "a small bird found a red car yesterday", "my sister called her friend again"]
QUICK = ["--trainer.max_steps", "4", "--trainer.max_epochs", "-1", "--eval.prior_samples", "6",
         "--eval.interp_pairs", "2", "--eval.bleu_sentences", "6", "--eval.num_samples_txt", "2",
         "--eval.iw_samples", "2", "--model.latent_dim", "8"]


@pytest.fixture(scope="module")
def tiny_lms(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_lm")
    return {kind: build_tiny_lm(kind, root / kind) for kind in ("gpt2", "llama")}


def lm_model(directory: Path, **decoder) -> tuple[VAE, object]:
    """An untrained VAE over the LM in `directory` (eval mode) and textvae's tokenizer for it."""
    torch.manual_seed(0)
    parts = load_hf(str(directory), "model.decoder.pretrained", "decoder")
    config = ModelConfig(latent_dim=8, decoder=DecoderConfig(type="pretrained", pretrained=str(directory), **decoder))
    tokenizer = text_tokenizer(parts[1])
    return VAE(config, tokenizer.get_vocab_size(), tokenizer, {"decoder": parts}).eval(), tokenizer


def batch(tokenizer, sentences=SENTENCES) -> torch.Tensor:
    specials = special_ids(tokenizer)
    return pad_batch([frame(ids, specials=specials) for ids in encode_batch(tokenizer, sentences)], specials.pad)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_special_ids_come_from_the_lm_tokenizer(tiny_lms, kind, single_thread):
    model, tokenizer = lm_model(tiny_lms[kind])
    specials = special_ids(tokenizer)
    assert specials == model.specials
    hf_tokenizer = model.decoder.hf_tokenizer
    if kind == "gpt2":  # one <|endoftext|> starts and ends sentences; pad and unk are added
        assert specials.bos == specials.eos == hf_tokenizer.convert_tokens_to_ids("<|endoftext|>")
        assert {hf_tokenizer.pad_token, hf_tokenizer.unk_token} == {"<pad>", "<unk>"}
    else:  # SentencePiece-style: the LM's own <unk>, <s>, </s>; only <pad> is added
        assert (hf_tokenizer.unk_token, hf_tokenizer.bos_token, hf_tokenizer.eos_token) == ("<unk>", "<s>", "</s>")
        assert hf_tokenizer.pad_token == "<pad>"
    assert len(set(specials)) == (3 if kind == "gpt2" else 4)
    assert model.vocab_size == len(hf_tokenizer) == model.decoder.hf.get_input_embeddings().weight.size(0)
    tokens = batch(tokenizer)
    assert tokens[0, 0] == specials.bos and (tokens == specials.pad).any()
    assert list(encode_batch(tokenizer, ["<unk> cat"])[0])[0] == specials.unk  # PTB's literal <unk>


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("injection", [{}, {"latent_as_embedding": False}, {"latent_as_memory": False}])
def test_cached_uncached_batched_and_single_decodes_agree(tiny_lms, kind, injection, single_thread):
    model, tokenizer = lm_model(tiny_lms[kind], **injection)
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(1)) * 3
    for strategy, options in (("greedy", {}), ("beam", {"beam_size": 3})):
        cached = decode_codes(model, z, strategy, max_length=12, **options)
        assert cached == decode_codes(model, z, strategy, max_length=12, use_cache=False, **options)
        assert cached == [decode_codes(model, z[i: i + 1], strategy, max_length=12, **options)[0] for i in range(4)]
    sampled = [decode_codes(model, z, "sample", 12, temperature=0.8, top_k=20, top_p=0.9,
                            generator=torch.Generator().manual_seed(3), use_cache=use_cache) for use_cache in (True, False)]
    assert sampled[0] == sampled[1]
    # Teacher forcing over a padded batch gives each sentence's own likelihood.
    tokens = batch(tokenizer)
    codes = z[:3]
    together = model.reconstruction_nll(tokens, codes)
    alone = torch.cat([model.reconstruction_nll(batch(tokenizer, [s]), codes[i: i + 1]) for i, s in enumerate(SENTENCES)])
    assert torch.allclose(together, alone, atol=1e-4)
    # The cached step-by-step features are the teacher-forced ones.
    features, _ = model.decoder(tokens[:, :-1], codes)
    state = model.decoder.start(codes)
    for position in range(3):
        step, state = model.decoder.step(tokens[:, position], state)
        assert torch.allclose(step, features[:, position], atol=1e-5)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("injection", [{"latent_as_embedding": False}, {"latent_as_memory": False}])
def test_changing_z_changes_the_output_distribution(tiny_lms, kind, injection, single_thread):
    model, tokenizer = lm_model(tiny_lms[kind], **injection)
    tokens = batch(tokenizer)
    features = [model.decoder(tokens[:, :-1], torch.full((3, 8), value))[0] for value in (-2.0, 2.0)]
    assert not torch.allclose(model.logits(features[0]), model.logits(features[1]), atol=1e-3)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_iw_nll_is_at_most_the_elbo(tiny_lms, kind, single_thread):
    model, tokenizer = lm_model(tiny_lms[kind])
    tokens = batch(tokenizer)
    torch.manual_seed(0)
    estimate = iw_nll(model, tokens, 50)
    single = torch.stack([iw_nll(model, tokens, 1).nll for _ in range(50)]).mean(0)  # the ELBO, averaged
    assert torch.isfinite(estimate.nll).all()
    assert (estimate.nll <= single + 1e-3).all()


# gpt2: frozen LM, z as memory and embedding; llama: fine-tuned at half the learning rate, z as memory only.
RUNS = {"gpt2": ["--model.decoder.freeze", "true"],
        "llama": ["--model.decoder.latent_as_embedding", "false", "--optim.lr", "0.01", "--model.decoder.lr_scale", "0.5"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_corpus, tiny_lms) -> dict[str, Path]:
    return {kind: train_debug(tmp_path_factory.mktemp(f"{kind}_run"), text_overrides(tiny_corpus) + QUICK + [
        "--model.decoder.type", "pretrained", "--model.decoder.pretrained", str(tiny_lms[kind]), *options])
        for kind, options in RUNS.items()}


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_cli_training_export_and_offline_reload(runs, kind, single_thread):
    import json

    from textvae.training import load_checkpoint_model

    run = runs[kind]
    model_dir = run / "model"
    assert {"config.json", "tokenizer.json"} <= {p.name for p in (model_dir / "decoder").iterdir()}
    assert not list(model_dir.rglob("*.bin")) and not list(model_dir.rglob("*.pt"))  # nothing to unpickle
    exported = TextVAE.from_pretrained(model_dir)
    trained = load_checkpoint_model(run / "checkpoints" / "last.ckpt", exported.tokenizer)
    nll, tokens = exported.score(SENTENCES, iw_samples=3)
    assert torch.equal(nll, trained.score(SENTENCES, iw_samples=3)[0])
    assert torch.equal(tokens, torch.tensor([len(ids) - 1 for ids in exported.tokenize(SENTENCES)]))
    greedy = exported.reconstruct(SENTENCES, max_length=12)
    assert greedy == trained.reconstruct(SENTENCES, max_length=12)
    exported.save_pretrained(run / "again")
    again = TextVAE.from_pretrained(run / "again")
    assert again.reconstruct(SENTENCES, max_length=12) == greedy
    assert len(exported.interpolate(SENTENCES[0], SENTENCES[1], steps=2, strategy="beam", max_length=12)) == 4
    assert len(exported.sample(3, seed=0, top_p=0.9, max_length=12)) == 3
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("valid", "test"):  # subword perplexity, and per whitespace word + <eos>
        assert metrics[split]["nll"] <= metrics[split]["elbo"] + 1e-4
        # gpt2's 300 byte-level tokens split words; llama's 200 BPE tokens hold every word of the grammar whole
        assert metrics[split]["ppl_word"] >= metrics[split]["ppl"] > 1
        assert (metrics[split]["ppl_word"] > metrics[split]["ppl"]) == (kind == "gpt2")
    with pytest.raises(UserError, match="pretrained decoder"):
        exported.compress("the cat saw the ball\n")
    assert exported.max_new_tokens == 64  # the tiny LMs' position tables
    with pytest.raises(UserError, match="at most 64 .*pretrained decoder has 64 positions"):
        exported.decode(torch.zeros(1, 8), max_length=65)
    assert len(exported.decode(torch.zeros(1, 8), strategy="sample", max_length=64, seed=0, temperature=5.0)) == 1
    if kind == "gpt2":  # the CLI too (one kind: each call starts Python afresh)
        result = run_main(["generate", "--model", str(model_dir), "--n", "2", "--seed", "0", "--max-length", "10"],
                         cwd=run.parent.parent)
        assert result.returncode == 0 and len(result.stdout.splitlines()) == 2, result.stderr[-2000:]


def test_frozen_lm_is_unchanged_and_fine_tuned_one_moves(runs, tiny_lms):
    for kind, frozen in (("gpt2", True), ("llama", False)):
        original = load_file(str(tiny_lms[kind] / "model.safetensors"))
        exported = load_file(str(runs[kind] / "model" / "model.safetensors"))
        same = [torch.equal(tensor, exported[f"decoder.hf.{name}"][: tensor.size(0)]) for name, tensor in original.items()]
        assert all(same) if frozen else not all(same), kind
        assert any(name.startswith("decoder.z_to_memory") for name in exported)


def test_bad_name_is_one_line_and_exit_2_before_the_run_directory(tmp_path, tiny_corpus, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # fail at once rather than after network timeouts
    result = run_cli(["train", "--config", str(CONFIGS / "debug.yaml"), *text_overrides(tiny_corpus),
                      "--output_dir", "runs/bad", "--model.decoder.type", "pretrained",
                      "--model.decoder.pretrained", "no-such-org/no-such-lm"], cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "model.decoder.pretrained" in line and "no-such-org/no-such-lm" in line and "local directory" in line
    assert not (tmp_path / "runs").exists()


def test_an_encoder_is_refused_as_decoder(tmp_path):
    from transformers import BertConfig

    BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
               intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="not a decoder-only causal LM"):
        load_hf(str(tmp_path), "model.decoder.pretrained", "decoder")


def test_lm_weights_train_at_their_own_learning_rate_or_not_at_all(tiny_lms):
    from textvae.config import Config
    from textvae.system import VAESystem

    for freeze, rates in ((False, [1e-3, 5e-4]), (True, [1e-3])):
        decoder = DecoderConfig(type="pretrained", pretrained=str(tiny_lms["gpt2"]), freeze=freeze, lr_scale=0.5)
        config = Config(model=ModelConfig(latent_dim=8, decoder=decoder))
        system = VAESystem(config.to_dict(), 0)
        groups = system.parameter_groups()
        assert [group.get("lr", config.optim.lr) for group in groups] == rates
        lm = {id(p) for p in system.model.decoder.hf.parameters()}
        assert not lm & {id(p) for p in groups[0]["params"]}
        assert {id(p) for p in system.model.decoder.z_to_memory.parameters()} <= {id(p) for p in groups[0]["params"]}


@pytest.mark.parametrize("flags, key", [
    (["--model.decoder.type", "pretrained"], "model.decoder.pretrained"),
    (["--model.decoder.pretrained", "gpt2"], "model.decoder.pretrained"),
    (["--model.decoder.freeze", "true"], "model.decoder.freeze"),
    (["--model.decoder.lr_scale", "0.1"], "model.decoder.lr_scale"),
    (["--model.decoder.type", "pretrained", "--model.decoder.pretrained", "gpt2", "--model.decoder.latent_as_memory",
      "false", "--model.decoder.latent_as_embedding", "false"], "model.decoder.latent_as_embedding"),
])
def test_pretrained_decoder_keys_are_checked(flags, key):
    from textvae.config import load_config

    with pytest.raises(UserError, match=key):
        load_config(CONFIGS / "debug.yaml", flags)


def test_the_gpt2_config_names_a_pretrained_decoder():
    from textvae.config import load_config

    decoder = load_config(CONFIGS / "ptb_gpt2.yaml").model.decoder
    assert decoder.type == "pretrained" and decoder.pretrained and decoder.latent_as_memory


def test_a_pretrained_encoder_reads_the_lm_vocabulary(tiny_lms, tmp_path, single_thread):
    from test_pretrained import build_tiny as build_encoder
    from textvae.config import EncoderConfig

    bert = build_encoder("bert", tmp_path / "bert")
    parts = load_hf(str(tiny_lms["gpt2"]), "model.decoder.pretrained", "decoder")
    tokenizer = text_tokenizer(parts[1])
    config = ModelConfig(latent_dim=8, encoder=EncoderConfig(pretrained=str(bert)),
                         decoder=DecoderConfig(type="pretrained", pretrained=str(tiny_lms["gpt2"])))
    encoder = load_hf(str(bert), "model.encoder.pretrained")
    model = VAE(config, 0, tokenizer, {"decoder": parts, "encoder": encoder}).eval()
    tokens = batch(tokenizer)
    assert model.encoder.texts(tokens) == SENTENCES  # framing and padding dropped, GPT-2's bytes decoded
    mean, logvar = model.encode(tokens)
    assert mean.shape == (3, 8) and torch.isfinite(logvar).all()


def test_bench_encoder_flops_count_each_sentences_own_positions(tiny_lms, tmp_path, single_thread):
    """bench_train's encoder FLOPs over a Llama vocabulary, whose pad id is not textvae's word-level
    one: a sentence costs the same batched with longer ones as alone."""
    from test_pretrained import build_tiny as build_encoder
    from textvae.benchmarking import pretrained_encoder_flops_per_token
    from textvae.config import EncoderConfig

    bert = build_encoder("bert", tmp_path / "bert")
    parts = load_hf(str(tiny_lms["llama"]), "model.decoder.pretrained", "decoder")
    tokenizer = text_tokenizer(parts[1])
    assert special_ids(tokenizer).pad != 0
    config = ModelConfig(latent_dim=8, encoder=EncoderConfig(pretrained=str(bert)),
                         decoder=DecoderConfig(type="pretrained", pretrained=str(tiny_lms["llama"])))
    model = VAE(config, 0, tokenizer, {"decoder": parts, "encoder": load_hf(str(bert), "model.encoder.pretrained")})
    ids = [frame(x, specials=special_ids(tokenizer)) for x in encode_batch(tokenizer, SENTENCES)]
    alone = [pretrained_encoder_flops_per_token(model.encoder, [row]) * (len(row) - 1) for row in ids]
    together = pretrained_encoder_flops_per_token(model.encoder, ids) * sum(len(row) - 1 for row in ids)
    assert together == pytest.approx(sum(alone))


def test_bench_lm_cache_reports_both_cases_and_identical_outputs(tiny_lms, monkeypatch, capsys, single_thread):
    import json
    import runpy

    monkeypatch.setattr("sys.argv", ["bench_lm_cache.py", "--lm", str(tiny_lms["llama"]), "--codes", "2",
                                     "--max-length", "5"])
    scripts = CONFIGS.parent / "scripts"
    runpy.run_path(str(scripts / "bench_lm_cache.py"), run_name="__main__")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line.get("use_cache") for line in lines[:2]] == [True, False] and lines[2] == {"identical": True}


def test_scratch_lm_predicts_the_native_decoders_vocabulary(tmp_path, tiny_corpus, monkeypatch, single_thread):
    """scripts/scratch_lm.py: a random GPT-2 over textvae's own vocabulary, so that the pretrained
    path and the native decoder are scored on the same tokens."""
    import runpy

    from transformers import AutoConfig

    from textvae.config import load_config
    from textvae.data import load_corpus

    overrides = text_overrides(tiny_corpus)
    out = tmp_path / "lm"
    monkeypatch.setattr("sys.argv", ["scratch_lm.py", "--config", str(CONFIGS / "debug.yaml"), "--out", str(out),
                                     "--layers", "2", "--width", "16", "--heads", "2", "--feedforward", "32",
                                     *overrides])
    runpy.run_path(str(CONFIGS.parent / "scripts" / "scratch_lm.py"), run_name="__main__")
    _, native = load_corpus(load_config(CONFIGS / "debug.yaml", overrides).data)
    module, hf_tokenizer = load_hf(str(out), "model.decoder.pretrained", "decoder")
    assert AutoConfig.from_pretrained(out).n_layer == 2
    assert text_tokenizer(hf_tokenizer).get_vocab() == native.get_vocab()  # nothing added, same ids
    assert tuple(lm_specials(hf_tokenizer)) == (0, 1, 2, 3)  # <pad> <unk> <bos> <eos>, as textvae frames
    assert module.get_input_embeddings().weight.size(0) == native.get_vocab_size()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_bench_flops_count_the_lm_matrix_weights_torch_counts(tiny_lms, kind, single_thread):
    # The weight part of textvae.benchmarking's estimate against torch's FLOP counter on one unpadded sentence:
    # every matrix product of the decoder and its LM head, less z's per-sentence projections.
    from torch.utils.flop_counter import FlopCounterMode

    from textvae.benchmarking import pretrained_decoder_flops_per_token

    model, tokenizer = lm_model(tiny_lms[kind])
    inputs = batch(tokenizer, SENTENCES[:1])[:, :-1]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        features, _ = model.decoder(inputs, torch.randn(1, 8))
        model.logits(features)
    counts = counter.get_flop_counts()["Global"]
    matmuls = sum(v for op, v in counts.items() if str(op) in ("aten.mm", "aten.addmm"))
    z_maps = sum(2 * m.weight.numel() for m in (model.decoder.z_to_memory, model.decoder.z_to_embedding))
    per_position = (matmuls - z_maps) / inputs.size(1)
    mean_length = 10.0
    hf = model.decoder.hf
    attention = 2 * 2 * model.decoder.layers * hf.config.num_attention_heads * model.decoder.head_dim * (mean_length / 2 + 1)
    forward = pretrained_decoder_flops_per_token(model.decoder, mean_length, training=False)
    assert forward - attention == pytest.approx(per_position, rel=1e-6)
    assert pretrained_decoder_flops_per_token(model.decoder, mean_length) == pytest.approx(3 * forward)
    model.decoder.freeze = True
    assert pretrained_decoder_flops_per_token(model.decoder, mean_length) == pytest.approx(2 * forward)


def test_the_lm_alone_loads_no_encoder_injects_nothing_and_scores_exactly(tiny_lms, single_thread):
    """model.latent: none over a causal LM: the reference row without a latent."""
    from textvae.config import EncoderConfig
    from textvae.pretrained import load_parts

    directory = tiny_lms["llama"]
    config = ModelConfig(latent_dim=8, latent="none", encoder=EncoderConfig(pretrained="never/loaded"),
                         decoder=DecoderConfig(type="pretrained", pretrained=str(directory)))
    parts = load_parts(config)
    assert set(parts) == {"decoder"}  # the encoder section is ignored, not even loaded
    tokenizer = text_tokenizer(parts["decoder"][1])
    model = VAE(config, tokenizer.get_vocab_size(), tokenizer, parts).eval()
    assert model.encoder is None and not [name for name in model.state_dict() if "z_to_" in name]
    tokens = batch(tokenizer)
    estimate = iw_nll(model, tokens, samples=4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(estimate.nll, estimate.rec, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(estimate.elbo, estimate.rec, rtol=1e-5, atol=1e-4)
    hf = parts["decoder"][0]
    with torch.no_grad():  # the LM's own likelihood of `w1 .. wn <eos>` after <bos>
        logits = hf(input_ids=tokens[:, :-1]).logits
        pad = lm_specials(parts["decoder"][1]).pad
        direct = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], ignore_index=pad,
                                                   reduction="none").sum(1)
    torch.testing.assert_close(estimate.rec, direct, rtol=1e-4, atol=1e-3)
