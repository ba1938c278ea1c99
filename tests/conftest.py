"""Shared fixtures: repository paths, a small synthetic corpus, and models trained once per session.

Trained models come from the real CLI (`textvae train`) on `configs/debug.yaml` with overrides,
in a temporary working directory, so every test that needs a model sees what a user would.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
PTB_DIR = REPO / "data" / "ptb"

SUBJECTS = ["the cat", "a dog", "the old man", "my sister", "the company", "a small bird", "the teacher"]
VERBS = ["saw", "liked", "chased", "found", "helped", "called", "watched"]
OBJECTS = ["the ball", "a red car", "the market", "her friend", "the new house", "a green tree", "the river"]
ENDINGS = ["", "yesterday", "in the morning", "again", "at night"]


def pytest_configure(config):
    """Under pytest-xdist (`-n 2`, as pyproject.toml asks) each worker has a core: one torch thread
    per worker and per process it starts, instead of two threads per worker fighting for both."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def synthetic_sentences(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(filter(None, [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS),
                                   rng.choice(ENDINGS)])) for _ in range(count)]


def build_tiny_lm(kind: str, directory: Path) -> Path:
    """Save a random 2-layer, width-32 GPT-2 or Llama and its tokenizer into `directory`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    text = synthetic_sentences(300, 5)
    if kind == "gpt2":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.train_from_iterator(text, trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False))
        end = "<|endoftext|>"
        wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=end, eos_token=end, unk_token=end)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_embd=32, n_layer=2, n_head=2,
                                           n_positions=64, bos_token_id=0, eos_token_id=0))
    else:
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        tokenizer.train_from_iterator(text, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"],
                                                                 show_progress=False))
        wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                          unk_token="<unk>")
        model = LlamaForCausalLM(LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32,
                                             intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                             num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1,
                                             eos_token_id=2))
    model.save_pretrained(directory)
    wrapped.save_pretrained(directory)
    return directory


def framed_batch(lengths: list[int], seed: int = 0, pad_to: int | None = None, vocab: int = 40):
    """`<bos> w1 .. wn <eos>` rows of random word ids (never special), right-padded with PAD_ID."""
    import torch

    from textvae.tokenizer import BOS_ID, EOS_ID, PAD_ID

    generator = torch.Generator().manual_seed(seed)
    width = max(pad_to or 0, max(lengths) + 2)
    tokens = torch.full((len(lengths), width), PAD_ID, dtype=torch.long)
    for row, length in enumerate(lengths):
        tokens[row, 0] = BOS_ID
        tokens[row, 1: length + 1] = torch.randint(4, vocab, (length,), generator=generator)
        tokens[row, length + 1] = EOS_ID
    return tokens


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors run fastest on one thread (and do not fight other processes for the cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cpu_bf16(monkeypatch):
    """This CPU as one with bfloat16 instructions, so that bf16 paths run (slowly on AVX2) rather
    than falling back to float32; returns a setter that makes it one without them."""
    import textvae.device

    monkeypatch.setattr(textvae.device, "_cpu_bf16", lambda: True)
    return lambda native: monkeypatch.setattr(textvae.device, "_cpu_bf16", lambda: native)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> dict[str, Path]:
    """train/valid/test files of a small synthetic grammar (one sentence per line)."""
    root = tmp_path_factory.mktemp("tiny_corpus")
    files = {}
    for split, count, seed in (("train", 600, 0), ("valid", 60, 1), ("test", 60, 2)):
        files[split] = root / f"{split}.txt"
        files[split].write_text("\n".join(synthetic_sentences(count, seed)) + "\n")
    return files


def text_overrides(corpus: dict[str, Path]) -> list[str]:
    """Command-line overrides that point debug.yaml at a text corpus."""
    return ["--data.dataset", "text", "--data.limit", "null",
            "--data.train_file", str(corpus["train"]), "--data.valid_file", str(corpus["valid"]),
            "--data.test_file", str(corpus["test"])]


def run_cli(args: list[str], cwd: Path, timeout: float = 300, env_update: dict | None = None,
            **kwargs) -> subprocess.CompletedProcess:
    """Run `textvae ARGS` as a user would, in a new process in `cwd`, capturing text output
    (`env_update`: extra environment variables). For what the process boundary is part of:
    signals, start-up imports, concurrent runs; otherwise `run_main` is the same, cheaper."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env_update or {})}
    return subprocess.run([sys.executable, "-m", "textvae", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def run_main(args: list[str], cwd: Path, input: str | None = None) -> subprocess.CompletedProcess:
    """`textvae ARGS` in this process (`textvae.cli.main`), in `cwd`, with stdin, stdout and stderr
    captured as a shell would see them; the result reads like `run_cli`'s. An exception other than
    the ones `main` turns into an exit status ends with status 1 and its traceback on stderr, as
    in a process of its own. Not thread-safe (it changes the working directory and sys.std*)."""
    import contextlib
    import io
    import logging
    import traceback
    import warnings

    from textvae.cli import main

    streams = {name: io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="") for name in ("stdout", "stderr")}
    stdin = io.TextIOWrapper(io.BytesIO((input or "").encode("utf-8")), encoding="utf-8")
    logger = logging.getLogger("textvae")
    saved = logger.handlers[:], logger.level, logger.propagate
    previous = os.getcwd()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(streams["stdout"]), contextlib.redirect_stderr(streams["stderr"]), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            real_stdin, sys.stdin = sys.stdin, stdin
            try:
                status = main(list(args))
            except SystemExit as error:
                status = error.code if isinstance(error.code, int) else 1
            except Exception:
                traceback.print_exc()
                status = 1
            finally:
                sys.stdin = real_stdin
    finally:
        os.chdir(previous)
        logger.handlers[:], logger.level, logger.propagate = saved
    output = {}
    for name, stream in streams.items():
        stream.flush()
        output[name] = stream.buffer.getvalue().decode("utf-8", errors="replace")
    return subprocess.CompletedProcess(["textvae", *args], status, output["stdout"], output["stderr"])


def train_debug(workdir: Path, extra: list[str]) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    result = run_main(["train", "--config", str(CONFIGS / "debug.yaml"), "--output_dir", "runs/model", *extra],
                      cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir / "runs" / "model"


@pytest.fixture(scope="session")
def gru_run(tmp_path_factory, tiny_corpus) -> Path:
    """Run directory of a GRU-decoder model trained on the synthetic corpus via the CLI."""
    workdir = tmp_path_factory.mktemp("gru_run")
    return train_debug(workdir, text_overrides(tiny_corpus) + ["--trainer.max_epochs", "8"])


@pytest.fixture(scope="session")
def transformer_run(tmp_path_factory, tiny_corpus) -> Path:
    """Run directory of a transformer-decoder model trained on the synthetic corpus via the CLI."""
    workdir = tmp_path_factory.mktemp("transformer_run")
    return train_debug(workdir, text_overrides(tiny_corpus) + [
        "--model.decoder.type", "transformer", "--trainer.max_epochs", "8"])
