"""The `textvae` inference subcommands, run as a user would, against the Python API's answers."""

from __future__ import annotations

import json
import math
import os
import random
import select
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_main, text_overrides, train_debug
from textvae.api import TextVAE
from textvae.tokenizer import decode_ids

METRIC_KEYS = {"rec", "kl", "elbo", "nll", "ppl", "mi", "au", "rec_bleu", "rec_exact", "interp_distinct", "interp_step",
               "distinct_1", "distinct_2", "novel"}
SENTENCES = ["the cat saw the ball", "a small bird found a red car yesterday", "my sister called her friend again",
             "the teacher watched the river at night", "the old man liked the market in the morning"]


def workdir(run_dir: Path) -> Path:
    """The working directory the run was trained in (its runs/latest points at the run)."""
    return run_dir.parent.parent


def ok(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


@pytest.fixture(scope="module")
def models(gru_run, transformer_run) -> dict[str, tuple[Path, TextVAE]]:
    return {name: (run, TextVAE.from_pretrained(run)) for name, run in
            (("gru_run", gru_run), ("transformer_run", transformer_run))}


@pytest.fixture(scope="module")
def sentence_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli_input") / "sentences.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    return path


def test_generate_uses_latest_model_and_seed(models):
    run, vae = models["gru_run"]
    explicit = ok(run_main(["generate", "--n", "20", "--seed", "7", "--model", str(run / "model")], cwd=workdir(run)))
    assert len(explicit) == 20 and all(line.strip() for line in explicit)
    default = ok(run_main(["generate", "--n", "20", "--seed", "7"], cwd=workdir(run)))  # --model runs/latest
    assert default == explicit
    assert explicit == vae.sample(n=20, seed=7, strategy="sample")


GENERATE_CASES = [
    ("gru_run", "text", ["--strategy", "greedy"]),
    ("gru_run", "text", ["--strategy", "sample", "--temperature", "0.8", "--top-k", "10", "--top-p", "0.9"]),
    ("gru_run", "text", ["--strategy", "beam", "--beam-size", "3"]),
    ("transformer_run", "jsonl", ["--strategy", "greedy"]),
    ("transformer_run", "jsonl", ["--strategy", "sample", "--temperature", "0.8", "--top-k", "10", "--top-p", "0.9"]),
    ("transformer_run", "jsonl", ["--strategy", "beam", "--beam-size", "3"]),
]


@pytest.mark.parametrize("name,fmt,options", GENERATE_CASES, ids=lambda v: v if isinstance(v, str) else v[1])
def test_generate_strategies(models, name, fmt, options):
    run, vae = models[name]
    lines = ok(run_main(["generate", "--n", "5", "--seed", "1", "--max-length", "15", "--format", fmt, *options,
                        "--model", str(run)], cwd=workdir(run)))
    assert len(lines) == 5
    texts = [json.loads(line)["text"] for line in lines] if fmt == "jsonl" else lines
    if fmt == "jsonl":
        assert all(set(json.loads(line)) == {"text"} for line in lines)
    keyword = {"--strategy": "strategy", "--temperature": "temperature", "--top-k": "top_k", "--top-p": "top_p",
               "--beam-size": "beam_size"}
    decoding = {keyword[flag]: (value if flag == "--strategy" else float(value) if "." in value else int(value))
                for flag, value in zip(options[::2], options[1::2])}
    assert texts == vae.sample(n=5, seed=1, max_length=15, **decoding)


def test_generate_streams(models):
    run, vae = models["gru_run"]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}  # a plain pipe
    # Ten million sentences take hours: output within the timeout proves they are streamed, not collected.
    process = subprocess.Popen([sys.executable, "-m", "textvae.cli", "generate", "--n", "10000000", "--seed", "0"],
                               cwd=workdir(run), env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 90)
        assert ready, "no output within 90 s"
        first = [process.stdout.readline().rstrip("\n") for _ in range(3)]
        assert process.poll() is None  # still generating: lines come out as they are made
    finally:
        process.kill()
        process.wait()
    assert first == vae.sample(n=500, seed=0)[:3]


def test_max_length_beyond_the_transformer_decoder_is_one_line_exit_2(models, sentence_file, tmp_path):
    run, vae = models["transformer_run"]  # 512 decoder positions: at most 512 tokens per output
    codes = tmp_path / "codes.npy"
    np.save(codes, vae.encode(SENTENCES[:2]).cpu().numpy())
    for command in (["generate", "--n", "2"], ["reconstruct", str(sentence_file)], ["decode", str(codes)],
                    ["interpolate", SENTENCES[0], SENTENCES[1]]):
        result = run_main([*command, "--max-length", "513", "--model", str(run)], cwd=workdir(run))
        assert result.returncode == 2 and result.stdout == "", (command, result.stderr[-2000:])
        assert result.stderr == ("textvae: error: --max-length must be at most 512 for this model (its transformer "
                                 "decoder has model.decoder.max_positions=512), got 513\n")
    at_limit = ok(run_main(["generate", "--n", "2", "--max-length", "512", "--model", str(run)], cwd=workdir(run)))
    assert len(at_limit) == 2


def test_score_reports_lines_longer_than_the_model_reads(models, tmp_path):
    run, _ = models["transformer_run"]
    long_line = " ".join(["the cat saw the ball"] * 120)  # 600 words; the model reads 510
    path = tmp_path / "lines.txt"
    path.write_text(f"{SENTENCES[0]}\n{long_line}\n")
    result = run_main(["score", str(path), "--iw-samples", "2", "--model", str(run)], cwd=workdir(run))
    rows = parse_score_text(ok(result))
    assert [row[2] for row in rows] == [6, 511] and all(np.isfinite(row[0]) for row in rows)
    assert "warning: 1 of 2 sentence(s) are longer than the 510 tokens this model reads" in result.stderr
    assert "Traceback" not in result.stderr


def test_interpolate_matches_api(models):
    run, vae = models["transformer_run"]
    a, b = SENTENCES[0], SENTENCES[1]
    lines = ok(run_main(["interpolate", a, b, "--steps", "3"], cwd=workdir(run)))
    assert len(lines) == 5
    assert lines == vae.interpolate(a, b, steps=3)
    assert lines[0] == vae.reconstruct([a])[0] and lines[-1] == vae.reconstruct([b])[0]


def test_reconstruct_file(models, sentence_file):
    run, vae = models["gru_run"]
    lines = ok(run_main(["reconstruct", str(sentence_file)], cwd=workdir(run)))
    assert lines == vae.reconstruct(SENTENCES)


@pytest.fixture(scope="module")
def transformer_reconstructions(models, sentence_file) -> list[str]:
    """`textvae reconstruct -` of the sentence file on stdin, with the transformer model."""
    run, _ = models["transformer_run"]
    return ok(run_main(["reconstruct", "-", "--model", str(run)], cwd=workdir(run), input=sentence_file.read_text()))


def test_reconstruct_stdin(models, transformer_reconstructions):
    _, vae = models["transformer_run"]
    assert transformer_reconstructions == vae.reconstruct(SENTENCES)


def test_encode_then_decode_is_reconstruct(models, sentence_file, transformer_reconstructions, tmp_path):
    run, vae = models["transformer_run"]
    codes_path = tmp_path / "codes.npy"
    result = run_main(["encode", str(sentence_file), "--out", str(codes_path), "--model", str(run)], cwd=workdir(run))
    assert ok(result) == []  # codes go to the file, not stdout
    codes = np.load(codes_path)
    assert codes.dtype == np.float32 and codes.shape == (len(SENTENCES), vae.latent_dim)
    np.testing.assert_allclose(codes, vae.encode(SENTENCES).cpu().numpy(), rtol=0, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["codes.npy"]  # no temporary file left
    decoded = ok(run_main(["decode", str(codes_path), "--model", str(run)], cwd=workdir(run)))
    assert decoded == transformer_reconstructions


@pytest.fixture(scope="module")
def score_input(tmp_path_factory, tiny_corpus) -> tuple[Path, list[str], list[bool]]:
    """Held-out corpus sentences mixed with word-shuffled ones (the anomalies)."""
    normal = tiny_corpus["test"].read_text().splitlines()[:20]
    rng = random.Random(0)
    lines, shuffled = [], []
    for sentence in normal:
        words = sentence.split()
        while " ".join(words) == sentence:
            rng.shuffle(words)
        lines += [sentence, " ".join(words)]
        shuffled += [False, True]
    path = tmp_path_factory.mktemp("score") / "lines.txt"
    path.write_text("\n".join(lines) + "\n")
    return path, lines, shuffled


def parse_score_text(lines: list[str]) -> list[tuple[float, float, int, str, str]]:
    rows = []
    for line in lines:
        nll, per_token, tokens, flag, sentence = line.split("\t")
        rows.append((float(nll), float(per_token), int(tokens), flag, sentence))
    return rows


def test_score_threshold(models, score_input):
    run, vae = models["gru_run"]
    path, lines, _ = score_input
    nll, tokens = vae.score(lines, iw_samples=10, seed=0)
    per_token = sorted((nll / tokens).tolist())
    threshold = (per_token[len(per_token) // 2 - 1] + per_token[len(per_token) // 2]) / 2  # between two values
    output = ok(run_main(["score", str(path), "--iw-samples", "10", "--threshold", f"{threshold:.6f}"],
                        cwd=workdir(run)))
    rows = parse_score_text(output)
    assert [row[4] for row in rows] == lines
    assert [row[2] for row in rows] == [len(line.split()) + 1 for line in lines] == tokens.tolist()
    np.testing.assert_allclose([row[0] for row in rows], nll.numpy(), atol=2e-3)
    np.testing.assert_allclose([row[1] for row in rows], (nll / tokens).numpy(), atol=2e-4)
    expected = ["ANOMALY" if value > threshold else "ok" for value in (nll / tokens).tolist()]
    assert [row[3] for row in rows] == expected
    assert expected.count("ANOMALY") == len(lines) // 2


def test_score_defaults_to_the_k_of_the_stored_thresholds(models, score_input):
    run, vae = models["gru_run"]
    path, lines, _ = score_input
    stored = vae.extra["score_quantiles"]["iw_samples"]
    assert stored == 5 and vae.default_iw_samples == stored  # debug.yaml's eval.iw_samples
    output = ok(run_main(["score", str(path), "--format", "jsonl"], cwd=workdir(run)))
    nll, _ = vae.score(lines, iw_samples=stored, seed=0)
    np.testing.assert_allclose([json.loads(line)["nll"] for line in output], nll.numpy(), atol=1e-4)
    assert not np.allclose(nll.numpy(), vae.score(lines, iw_samples=100, seed=0)[0].numpy(), atol=1e-4)


def test_score_percentile_jsonl(models, score_input):
    run, vae = models["gru_run"]
    path, lines, shuffled = score_input
    output = ok(run_main(["score", str(path), "--iw-samples", "10", "--percentile", "95", "--format", "jsonl"],
                        cwd=workdir(run)))
    records = [json.loads(line) for line in output]
    assert [r["text"] for r in records] == lines
    assert all(set(r) == {"text", "nll", "nll_per_token", "tokens", "anomaly"} for r in records)
    threshold = vae.anomaly_threshold(95)
    assert vae.anomaly_threshold(50) < threshold
    nll, tokens = vae.score(lines, iw_samples=10, seed=0)
    for record, value, count in zip(records, nll.tolist(), tokens.tolist()):
        assert record["tokens"] == count and record["nll"] == pytest.approx(value, abs=1e-4)
        assert record["nll_per_token"] == pytest.approx(value / count, abs=1e-5)
        assert record["anomaly"] is (value / count > threshold)
    # Word-shuffled sentences are the anomalies: nearly all are flagged, far more than held-out ones.
    flagged_shuffled = np.mean([r["anomaly"] for r, s in zip(records, shuffled) if s])
    flagged_normal = np.mean([r["anomaly"] for r, s in zip(records, shuffled) if not s])
    assert flagged_shuffled >= 0.8 and flagged_normal <= flagged_shuffled - 0.3, (flagged_shuffled, flagged_normal)


def test_evaluate_json(models, tiny_corpus):
    run, vae = models["gru_run"]
    output = ok(run_main(["evaluate", "--json", "--iw-samples", "5", "--model", str(run)], cwd=workdir(run)))
    assert len(output) == 1
    metrics = json.loads(output[0])
    assert METRIC_KEYS <= metrics.keys()
    assert metrics["split"] == "test" and metrics["iw_samples"] == 5
    test_lines = tiny_corpus["test"].read_text().splitlines()
    assert metrics["sentences"] == len(test_lines)
    assert metrics["tokens"] == sum(len(line.split()) + 1 for line in test_lines)
    # The corpus path of `evaluate` and the API's own tokenisation score the same sentences alike.
    nll, tokens = vae.score(test_lines, iw_samples=5, seed=0)
    assert metrics["nll"] == pytest.approx(nll.mean().item(), rel=1e-5)
    assert metrics["ppl"] == pytest.approx(math.exp(nll.sum().item() / tokens.sum().item()), rel=1e-4)
    references = [" ".join(line.split()) for line in test_lines[:50]]  # debug.yaml: eval.bleu_sentences 50
    exact = sum(r == h for r, h in zip(references, vae.reconstruct(test_lines[:50], max_length=60)))
    assert metrics["rec_exact"] == pytest.approx(exact / 50)


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory, tiny_corpus) -> Path:
    """debug.yaml with a byte-level BPE tokenizer, trained through the CLI on the synthetic corpus."""
    return train_debug(tmp_path_factory.mktemp("bpe_run"), text_overrides(tiny_corpus) + [
        "--data.tokenizer", "bpe", "--data.vocab_size", "300"])


# The byte-level alphabet's stand-ins for a space and a newline: decoding must turn them back.
BYTE_LEVEL_ARTEFACTS = ("\u0120", "\u010a")  # Ġ, Ċ


def test_bpe_model_end_to_end(bpe_run, tiny_corpus):
    vae = TextVAE.from_pretrained(bpe_run)
    assert vae.tokenizer.decoder is not None and vae.tokenizer.get_vocab_size() <= 300  # byte-level BPE
    words = {word for line in tiny_corpus["train"].read_text().splitlines() for word in line.split()}
    # subword units: some corpus word takes more than one token
    assert any(len(vae.tokenizer.encode(f" {word}", add_special_tokens=False).ids) > 1 for word in words)

    generated = ok(run_main(["generate", "--n", "20", "--seed", "0", "--max-length", "30"], cwd=workdir(bpe_run)))
    assert len(generated) == 20 and generated == vae.sample(n=20, seed=0, max_length=30)
    for line in generated:
        assert line == line.strip(), repr(line)
        assert not any(artefact in line for artefact in BYTE_LEVEL_ARTEFACTS), repr(line)
    lines = tiny_corpus["test"].read_text().splitlines()[:30]
    # the same decoding turns real sentences' tokens back into their text, spaces and all
    assert list(decode_ids(vae.tokenizer, (ids[1:] for ids in vae.tokenize(lines)))) == lines

    path = workdir(bpe_run) / "score.txt"
    path.write_text("\n".join(lines) + "\n")
    records = [json.loads(line) for line in
               ok(run_main(["score", str(path), "--iw-samples", "4", "--format", "jsonl"], cwd=workdir(bpe_run)))]
    assert [r["text"] for r in records] == lines
    assert all(np.isfinite(r["nll"]) and r["nll"] > 0 for r in records)
    assert [r["tokens"] for r in records] == [len(ids) - 1 for ids in vae.tokenize(lines)]  # BPE tokens + <eos>
