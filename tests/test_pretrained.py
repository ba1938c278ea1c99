"""Pretrained Hugging Face encoders (`model.encoder.pretrained`).

Tiny random BERT and RoBERTa models are built from transformers' config classes with tokenizers
of their own (WordPiece over the synthetic grammar's words; byte-level BPE trained on it), saved
into temporary directories and named by path, as a user would name a downloaded model. Each is
trained a few steps through the real CLI, exported and reloaded offline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import (CONFIGS, ENDINGS, OBJECTS, SUBJECTS, VERBS, run_cli, run_main, synthetic_sentences, text_overrides,
                      train_debug)
from textvae.api import TextVAE
from textvae.config import Config, EncoderConfig, ModelConfig, load_config
from textvae.errors import UserError
from textvae.model import VAE
from textvae.pretrained import load_parts
from textvae.system import VAESystem
from textvae.tokenizer import encode_batch, frame, pad_batch, train_tokenizer
from textvae.training import load_checkpoint_model

SENTENCES = ["the cat saw the ball", "a small bird found a red car yesterday", "my sister called her friend again"]
# A fast config: a few steps, small evaluation.
QUICK = ["--trainer.max_steps", "6", "--trainer.max_epochs", "-1", "--eval.prior_samples", "10",
         "--eval.interp_pairs", "2", "--eval.bleu_sentences", "10", "--eval.num_samples_txt", "2"]


def build_tiny(kind: str, directory: Path) -> Path:
    """Save a random 2-layer, width-32 BERT or RoBERTa and its tokenizer into `directory`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    torch.manual_seed(0)
    if kind == "bert":
        words = sorted({w for part in SUBJECTS + VERBS + OBJECTS + ENDINGS for w in part.split()})
        letters = list("abcdefghijklmnopqrstuvwxyz")
        tokens = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *letters,
                                     *(f"##{c}" for c in letters)]))  # "a" is a word and a letter
        tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                                 special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        tokenizer.decoder = decoders.WordPiece()
        wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                          cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
        model = BertModel(BertConfig(vocab_size=len(tokens), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    else:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tokenizer.train_from_iterator(synthetic_sentences(300, 5), trainers.BpeTrainer(
            vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False))
        tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
        wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                          sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                                          mask_token="<mask>")
        model = RobertaModel(RobertaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32,
                                           num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                           max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                                           eos_token_id=2))
    model.save_pretrained(directory)
    wrapped.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_hf")
    return {kind: build_tiny(kind, root / kind) for kind in ("bert", "roberta")}


@pytest.fixture(scope="module")
def word_tokenizer(tiny_corpus):
    return train_tokenizer(tiny_corpus["train"].read_text().splitlines(), "word")


# bert: mean pooling, fine-tuned at half the learning rate; roberta: CLS pooling, frozen.
RUNS = {"bert": ["--model.encoder.pooling", "mean", "--model.encoder.lr_scale", "0.5"],
        "roberta": ["--model.encoder.pooling", "cls", "--model.encoder.freeze", "true"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_corpus, tiny_models) -> dict[str, Path]:
    return {kind: train_debug(tmp_path_factory.mktemp(f"{kind}_run"), text_overrides(tiny_corpus) + QUICK + [
        "--model.encoder.pretrained", str(tiny_models[kind]), *options]) for kind, options in RUNS.items()}


def encoder_config(directory: Path, **options) -> ModelConfig:
    return ModelConfig(latent_dim=8, encoder=EncoderConfig(pretrained=str(directory), **options))


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_export_and_reload_give_the_training_checkpoints_codes(runs, kind, single_thread, cpu_bf16):
    run = runs[kind]
    model_dir = run / "model"
    assert {"config.json", "tokenizer.json"} <= {p.name for p in (model_dir / "encoder").iterdir()}
    assert not list(model_dir.rglob("*.bin")) and not list(model_dir.rglob("*.pt"))  # nothing to unpickle
    exported = TextVAE.from_pretrained(model_dir)
    trained = load_checkpoint_model(run / "checkpoints" / "last.ckpt", exported.tokenizer)
    codes = exported.encode(SENTENCES)
    assert torch.equal(codes, trained.encode(SENTENCES))
    exported.save_pretrained(run / "again")
    assert torch.equal(TextVAE.from_pretrained(run / "again").encode(SENTENCES), codes)
    cpu_bf16(True)
    bf16 = TextVAE.from_pretrained(model_dir, precision="bf16")
    assert bf16.precision == "bf16"
    assert torch.allclose(bf16.encode(SENTENCES), codes, atol=0.1)


def test_frozen_encoder_is_unchanged_and_fine_tuned_one_moves(runs, tiny_models):
    for kind, frozen in (("roberta", True), ("bert", False)):
        original = load_file(str(tiny_models[kind] / "model.safetensors"))
        exported = load_file(str(runs[kind] / "model" / "model.safetensors"))
        hf = {name.removeprefix("encoder.hf."): t for name, t in exported.items() if name.startswith("encoder.hf.")}
        assert hf and set(hf) <= set(original)  # the HF pooler is dropped, nothing else
        same = [torch.equal(tensor, original[name]) for name, tensor in hf.items()]
        assert all(same) if frozen else not all(same), kind


@pytest.mark.parametrize("kind,pooling", [("bert", "mean"), ("bert", "cls"), ("roberta", "mean"),
                                          ("roberta", "cls")])
def test_pooled_code_does_not_depend_on_padding(tiny_models, word_tokenizer, kind, pooling, single_thread):
    config = encoder_config(tiny_models[kind], pooling=pooling)
    model = VAE(config, word_tokenizer.get_vocab_size(), word_tokenizer, load_parts(config)).eval()
    ids = [frame(x) for x in encode_batch(word_tokenizer, SENTENCES)]
    with torch.no_grad():
        alone = model.encode(pad_batch(ids[:1]))
        padded = torch.cat([pad_batch(ids[:1]), torch.zeros(1, 7, dtype=torch.long)], dim=1)  # textvae padding too
        in_batch = model.encode(pad_batch([*ids[1:], ids[0]]))
        assert torch.allclose(model.encode(padded)[0], alone[0], atol=1e-5)
    for first, second in zip(alone, in_batch):
        assert torch.allclose(first[0], second[-1], atol=1e-5)


def test_lr_scale_makes_a_param_group_and_freeze_leaves_the_encoder_out(tiny_models, word_tokenizer):
    vocab = word_tokenizer.get_vocab_size()
    config = Config(model=encoder_config(tiny_models["bert"], lr_scale=0.25)).to_dict()
    system = VAESystem(config, vocab, word_tokenizer)
    optimizer = system.configure_optimizers()["optimizer"]
    hf = {id(p) for p in system.model.encoder.hf.parameters()}
    assert len(optimizer.param_groups) == 2
    rest, scaled = optimizer.param_groups
    assert {id(p) for p in scaled["params"]} == hf and not hf & {id(p) for p in rest["params"]}
    assert scaled["lr"] == pytest.approx(rest["lr"] * 0.25)

    config = Config(model=encoder_config(tiny_models["bert"], freeze=True)).to_dict()
    system = VAESystem(config, vocab, word_tokenizer).train()
    encoder = system.model.encoder
    assert not encoder.hf.training and encoder.to_posterior.training
    assert not any(p.requires_grad for p in encoder.hf.parameters())
    (group,) = system.configure_optimizers()["optimizer"].param_groups
    assert not {id(p) for p in encoder.hf.parameters()} & {id(p) for p in group["params"]}


def test_inference_commands_run_on_the_exported_model(runs, tmp_path, monkeypatch, capsys):
    from textvae.cli import main

    run = runs["bert"]
    model = ["--model", str(run / "model")]
    result = run_main(["interpolate", SENTENCES[0], SENTENCES[1], "--steps", "2", *model], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.splitlines()) == 4
    # encode and score in this process (the same parsing and handlers, without another start-up)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_text("\n".join(SENTENCES) + "\n")
    assert main(["encode", "in.txt", "--out", "codes.npy", *model]) == 0
    assert np.array_equal(np.load(tmp_path / "codes.npy"), TextVAE.from_pretrained(run).encode(SENTENCES).numpy())
    capsys.readouterr()
    assert main(["score", "in.txt", "--iw-samples", "3", *model]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(SENTENCES)


def test_a_name_that_cannot_be_loaded_fails_in_one_line_before_the_run_directory(tmp_path, tiny_corpus,
                                                                                 monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # fail at once rather than after network timeouts
    result = run_cli(["train", "--config", str(CONFIGS / "debug.yaml"), *text_overrides(tiny_corpus),
                      "--output_dir", "runs/bad", "--model.encoder.pretrained", "no-such-org/no-such-model"],
                     cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "model.encoder.pretrained" in line and "no-such-org/no-such-model" in line and "local directory" in line
    assert not (tmp_path / "runs").exists()


def test_api_errors_name_the_key_and_the_model(tmp_path, tiny_models, word_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=300, n_positions=32, bos_token_id=0,
                               eos_token_id=0)).save_pretrained(tmp_path / "gpt2")
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).symlink_to(tiny_models["bert"] / name)
    for directory, reason in ((tmp_path / "gpt2", "causal LM"), (no_tokenizer, "no tokenizer files"),
                              (tmp_path / "missing", "does not exist")):
        with pytest.raises(UserError) as error:
            load_parts(encoder_config(directory))
        message = str(error.value)
        assert "\n" not in message and "model.encoder.pretrained" in message and str(directory) in message
        assert reason in message
    with pytest.raises(UserError, match="model.encoder.freeze needs model.encoder.pretrained"):
        load_config(overrides=["--model.encoder.freeze", "true"])


def test_an_export_without_its_encoder_folder_is_refused_in_one_line(runs, tmp_path):
    import shutil

    broken = shutil.copytree(runs["bert"] / "model", tmp_path / "model", ignore=shutil.ignore_patterns("encoder"))
    with pytest.raises(UserError, match="encoder/config.json is missing") as error:
        TextVAE.from_pretrained(broken)
    assert "\n" not in str(error.value)


def test_bench_flop_count_of_a_pretrained_encoder_matches_torchs_counter(tiny_models, word_tokenizer, single_thread):
    """The encoder FLOPs behind bench_train.py's MFU, against torch's count on the real module."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from textvae.benchmarking import pretrained_encoder_flops_per_token

    config = encoder_config(tiny_models["bert"])
    model = VAE(config, word_tokenizer.get_vocab_size(), word_tokenizer, load_parts(config)).train()
    ids = [frame(x) for x in encode_batch(word_tokenizer, SENTENCES)]
    counted = 0
    for row in ids:  # one at a time: no padding positions for torch to count
        inputs = model.encoder.hf_tokenizer(model.encoder.texts(pad_batch([row])), return_tensors="pt")
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as forward:  # attention as matmuls
            model.encoder.hf(**inputs)
        counted += forward.get_total_flops()
    predicted = sum(len(row) - 1 for row in ids)
    estimate = pretrained_encoder_flops_per_token(model.encoder, ids, training=False)
    assert estimate == pytest.approx(counted / predicted, rel=0.01)
    assert pretrained_encoder_flops_per_token(model.encoder, ids) == pytest.approx(3 * estimate)
