"""GGUF files (llama.cpp's format) as pretrained decoders: a tiny Llama written with the `gguf`
package's own writer (2 layers, width 16, a 32-token `gpt2`-type BPE tokenizer with two merges,
about 27 KB) is named by path, as a user would name a local model file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import CONFIGS, text_overrides
from textvae.api import TextVAE
from textvae.cli import main
from textvae.errors import UserError
from textvae.gguf import convert
from textvae.pretrained import load_hf

gguf = pytest.importorskip("gguf", reason="the gguf extra (pip install -e '.[dev]' installs it)")

TOKENS = ["<|endoftext|>", *"abcdefghijklmnopqrstuvwxyz", "Ġ", ".", ",", "th", "Ġt"]  # 32, GPT-2 style
QUICK = ["--trainer.max_steps", "3", "--trainer.max_epochs", "-1", "--eval.prior_samples", "4",
         "--eval.interp_pairs", "1", "--eval.bleu_sentences", "4", "--eval.num_samples_txt", "2",
         "--eval.iw_samples", "2", "--model.latent_dim", "4"]


def write_tiny_gguf(path: Path, architecture: str = "llama") -> Path:
    """A random 2-layer, width-16 model of `architecture` with a byte-level BPE vocabulary."""
    rng = np.random.default_rng(0)
    width, layers, heads, feedforward = 16, 2, 2, 32
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_context_length(64)
    writer.add_embedding_length(width)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(feedforward)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(width // heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(TOKENS)
    writer.add_token_types([gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * (len(TOKENS) - 1))
    writer.add_token_merges(["t h", "Ġ t"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)

    def weight(name: str, *shape: int) -> None:
        writer.add_tensor(name, rng.normal(0, 0.02, shape).astype(np.float32))

    weight("token_embd.weight", len(TOKENS), width)
    for layer in range(layers):
        writer.add_tensor(f"blk.{layer}.attn_norm.weight", np.ones(width, np.float32))
        for name in ("q", "k", "v", "output"):
            weight(f"blk.{layer}.attn_{name}.weight", width, width)
        writer.add_tensor(f"blk.{layer}.ffn_norm.weight", np.ones(width, np.float32))
        weight(f"blk.{layer}.ffn_gate.weight", feedforward, width)
        weight(f"blk.{layer}.ffn_up.weight", feedforward, width)
        weight(f"blk.{layer}.ffn_down.weight", width, feedforward)
    writer.add_tensor("output_norm.weight", np.ones(width, np.float32))
    weight("output.weight", len(TOKENS), width)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.Q.gguf")


def transformers_own(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)


def test_a_gguf_file_loads_as_a_plain_causal_lm_with_the_files_weights(tiny_gguf, single_thread):
    module, tokenizer = load_hf(str(tiny_gguf), "model.decoder.pretrained", "decoder")
    assert type(module).__name__ == "LlamaForCausalLM" and module.config.num_hidden_layers == 2
    assert getattr(module.config, "quantization_config", None) is None  # so it saves and exports as a plain model
    reference = transformers_own(tiny_gguf).state_dict()
    state = module.state_dict()
    for name, tensor in reference.items():  # _prepare_lm grows the embeddings by <pad> and <unk>
        assert torch.equal(state[name][: tensor.size(0)], tensor), name
    assert tokenizer.tokenize("the cat") == ["th", "e", "Ġ", "c", "a", "t"]  # the file's two merges
    assert tokenizer.pad_token == "<pad>" and tokenizer.unk_token == "<unk>"


def test_convert_writes_a_model_directory_that_reloads_identically(tiny_gguf, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from textvae.gguf import main as gguf_main

    assert gguf_main([str(tiny_gguf), str(tmp_path / "plain")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "plain")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "plain").iterdir()}
    assert "quantization_config" not in json.loads((tmp_path / "plain" / "config.json").read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    reference = transformers_own(tiny_gguf)
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in reference.state_dict().items())
    assert AutoTokenizer.from_pretrained(tmp_path / "plain").tokenize("the cat") == ["th", "e", "Ġ", "c", "a", "t"]
    assert convert(str(tiny_gguf), tmp_path / "plain") == tmp_path / "plain"  # replaces a previous one whole


def test_training_on_a_gguf_decoder_exports_plain_safetensors(tiny_gguf, tiny_corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status = main(["train", "--config", str(CONFIGS / "debug.yaml"), *text_overrides(tiny_corpus), *QUICK,
                   "--output_dir", "runs/gguf", "--model.decoder.type", "pretrained",
                   "--model.decoder.pretrained", str(tiny_gguf)])
    assert status == 0, capsys.readouterr().err[-2000:]
    model_dir = tmp_path / "runs" / "gguf" / "model"
    assert not list(model_dir.rglob("*.gguf"))
    assert "quantization_config" not in json.loads((model_dir / "decoder" / "config.json").read_text())
    weights = load_file(str(model_dir / "model.safetensors"))
    reference = transformers_own(tiny_gguf).state_dict()
    assert weights["decoder.hf.model.layers.0.mlp.up_proj.weight"].shape == reference["model.layers.0.mlp.up_proj.weight"].shape
    vae = TextVAE.from_pretrained(model_dir)  # offline and without reading the GGUF file again
    assert len(vae.sample(2, seed=0, max_length=8)) == 2


def bad_train(tmp_path: Path, tiny_corpus, name: str, capsys) -> str:
    status = main(["train", "--config", str(CONFIGS / "debug.yaml"), *text_overrides(tiny_corpus),
                   "--output_dir", str(tmp_path / "runs" / "bad"), "--model.decoder.type", "pretrained",
                   "--model.decoder.pretrained", name])
    assert status == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert not (tmp_path / "runs").exists()
    return line


def test_a_missing_gguf_file_is_one_line_and_exit_2(tmp_path, tiny_corpus, capsys):
    line = bad_train(tmp_path, tiny_corpus, str(tmp_path / "absent.gguf"), capsys)
    assert "model.decoder.pretrained" in line and "absent.gguf" in line and "does not exist" in line


@pytest.mark.parametrize("content", [b"not a gguf file at all", b"GGUF\x03\x00\x00\x00\xff\xff truncated"])
def test_a_corrupt_gguf_file_is_one_line_and_exit_2(tmp_path, tiny_corpus, capsys, content):
    (tmp_path / "broken.gguf").write_bytes(content)
    line = bad_train(tmp_path, tiny_corpus, str(tmp_path / "broken.gguf"), capsys)
    assert "broken.gguf" in line and ("not a GGUF file" in line or "cannot read GGUF file" in line)


def test_a_gguf_that_is_not_a_causal_lm_is_refused_from_its_metadata(tmp_path, tiny_corpus, capsys):
    """An encoder-decoder (T5) GGUF is refused by its config, before any weights are read (it has
    none but the embeddings here)."""
    writer = gguf.GGUFWriter(str(tmp_path / "t5.gguf"), "t5")
    writer.add_context_length(64)
    writer.add_embedding_length(16)
    writer.add_block_count(1)
    writer.add_feed_forward_length(32)
    writer.add_head_count(2)
    writer.add_key_length(8)
    writer.add_value_length(8)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_relative_attn_buckets_count(8)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(TOKENS)
    writer.add_token_types([gguf.TokenType.NORMAL] * len(TOKENS))
    writer.add_token_merges([])
    writer.add_eos_token_id(0)
    writer.add_tensor("token_embd.weight", np.zeros((len(TOKENS), 16), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    line = bad_train(tmp_path, tiny_corpus, str(tmp_path / "t5.gguf"), capsys)
    assert "t5.gguf" in line and "(t5) is not a decoder-only causal LM" in line


def test_an_unsupported_gguf_architecture_is_one_line_and_exit_2(tmp_path, tiny_corpus, capsys):
    path = write_tiny_gguf(tmp_path / "bert.gguf", architecture="bert")
    line = bad_train(tmp_path, tiny_corpus, str(path), capsys)
    assert "bert.gguf" in line and "cannot read GGUF file" in line and "bert" in line


def test_without_the_gguf_package_the_error_names_the_extra(tiny_gguf, tmp_path, tiny_corpus, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    line = bad_train(tmp_path, tiny_corpus, str(tiny_gguf), capsys)
    assert "pip install 'textvae[gguf]'" in line
    with pytest.raises(UserError, match=r"textvae\[gguf\]"):
        load_hf(str(tiny_gguf), "model.decoder.pretrained", "decoder")
