"""Bits-back compression (compress.py): exact round trips for any text with both decoders,
damaged streams and other models refused with one line, the header, determinism across lanes,
processes and thread counts, the CLI, and the lossy `encode --bits` codes."""

from __future__ import annotations

import math
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

from conftest import REPO, run_main, synthetic_sentences
from textvae import TextVAE
from textvae.compress import (FORMAT_VERSION, HEADER_SIZE, MAGIC, classify, compress_with_startup, fingerprint,
                              parts_of, split_lines)
from textvae.quantize import dequantize_codes, quantize_codes
from textvae.errors import UserError
from textvae.tokenizer import pad_batch

pytestmark = pytest.mark.usefixtures("single_thread")


def mixed_text() -> str:
    """In-vocabulary sentences in PTB's spacing and others, raw text, unicode, blank lines, no final newline."""
    sentences = synthetic_sentences(40, seed=5)
    lines = [f" {s} " for s in sentences[:12]] + sentences[12:24] + [f" {s}" for s in sentences[24:30]]
    lines += ["", "The Cat saw a zebra, yesterday!", "the cat  saw the ball", "\ttabbed line", "",
              "naïve café — 東京 😀", "the cat saw <eos> the ball", "trailing\r", " ".join(["the cat"] * 400)]
    lines += [f"{s} " for s in sentences[30:]]
    return "\n".join(lines) + "\n\n   \nno final newline"


INPUTS = {"empty": "", "newline": "\n", "one word": "the", "blank lines": "\n\n\n", "unicode": "日本語\n🙂",
          "sentences": "\n".join(synthetic_sentences(30, seed=9)) + "\n", "mixed": mixed_text()}


@pytest.fixture(scope="module")
def gru(gru_run) -> TextVAE:
    return TextVAE.from_pretrained(gru_run)


@pytest.fixture(scope="module")
def transformer(transformer_run) -> TextVAE:
    return TextVAE.from_pretrained(transformer_run)


@pytest.fixture(scope="module", params=["gru", "transformer"])
def vae(request) -> TextVAE:
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("name", INPUTS)
def test_round_trip_is_byte_exact(vae, name):
    text = INPUTS[name]
    data = vae.compress(text)
    assert vae.decompress(data) == text


@pytest.mark.parametrize("lanes", [1, 2, 7, 64])
def test_round_trip_for_any_lane_count(vae, lanes):
    text = mixed_text()
    assert vae.decompress(vae.compress(text, lanes=lanes)) == text


def test_lines_take_the_model_path_or_the_escape(gru):
    lines, final_newline = split_lines(mixed_text())
    assert not final_newline and lines[-1] == "no final newline"
    flags, tokens = classify(gru, lines)
    assert flags[:30] == [4] * 12 + [1] * 12 + [2] * 6  # " x ", "x", " x"
    assert all(flag == 0 for flag, line in zip(flags, lines) if not line.strip() or "zebra" in line or "\t" in line
               or "  " in line or "<eos>" in line or "\r" in line or len(line.split()) > gru.max_words)
    assert all((flag == 0) == (ids is None) for flag, ids in zip(flags, tokens))


@pytest.mark.parametrize("parts", [1, 2])
def test_model_lines_cost_their_elbo(gru, parts):
    """Bits-back pays the negative ELBO: the stream is within 2% of the ELBO of the lines coded with
    bits back, plus -log p(x|z=0) of the lines the stack could not yet pay codes for, plus the
    headers and stack heads. Popping codes from an exhausted stack (format version 1) cost far
    more than that.
    With two parts each starts its own stack: its lanes' first lines are coded at z = 0."""
    sentences = synthetic_sentences(200, seed=11)
    text = "\n".join(sentences) + "\n"
    data, unpaid = compress_with_startup(gru, text, lanes=4, parts=parts)
    assert parts_of(data) == parts
    starts = set(range(0, 200, 50 // parts))  # the first line of each lane of each part
    assert starts <= set(unpaid) and len(unpaid) < 16 * parts
    assert gru.decompress(data) == text
    nll, _ = gru.score(sentences, iw_samples=1)
    with torch.no_grad():
        at_zero = gru.model.reconstruction_nll(pad_batch(gru.tokenize([sentences[i] for i in unpaid])),
                                               torch.zeros(len(unpaid), gru.latent_dim))
    paid = [i for i in range(len(sentences)) if i not in unpaid]
    # plus each part's header and the 64-bit head state its ANS stack ends with
    expected = float(nll[paid].sum() + at_zero.sum()) / math.log(2) + (8 * HEADER_SIZE + 64) * parts
    assert abs(8 * len(data) - expected) < 0.02 * expected
    assert len(data) < len(zlib.compress(text.encode(), 9))


@pytest.mark.parametrize("parts", [2, 3])
def test_parts_round_trip_and_split_at_line_starts(vae, parts):
    """A text of enough lines is cut into `parts` streams, one after the other, each starting on a
    line of the text; together they decode to the text, whatever the thread count."""
    text = mixed_text()  # 63 lines: at lanes 2 each part needs 8
    data = vae.compress(text, lanes=2, parts=parts)
    assert parts_of(data) == parts and data.count(MAGIC) >= parts
    assert vae.decompress(data) == text
    assert vae.compress(text, lanes=2, parts=1) != data
    assert parts_of(vae.compress("the cat saw the ball\n" * 7, lanes=2, parts=parts)) == 1  # too few lines


def test_a_missing_or_reordered_part_is_refused(gru):
    text = "\n".join(synthetic_sentences(40, seed=3)) + "\n"
    one, two = (gru.compress(piece, lanes=1, parts=1) for piece in (text[:100], text[100:]))
    data = gru.compress(text, lanes=2, parts=2)
    first = HEADER_SIZE + 4 * int.from_bytes(data[HEADER_SIZE - 12: HEADER_SIZE - 4], "little")
    with pytest.raises(UserError, match="truncated"):
        gru.decompress(data[:first])  # the first part alone: the second is missing
    with pytest.raises(UserError, match="out of order or missing"):
        gru.decompress(data[first:] + data[:first])
    with pytest.raises(UserError, match="trailing bytes"):
        gru.decompress(one + two)  # two one-part streams are no two-part stream
    with pytest.raises(UserError, match="parts must be"):
        gru.compress(text, parts=0)


def test_header_magic_version_and_fingerprint(gru, gru_run):
    data = gru.compress("the cat saw the ball\n")
    assert data[:4] == MAGIC and data[4] == FORMAT_VERSION
    assert data[5:37] == fingerprint(gru) == fingerprint(TextVAE.from_pretrained(gru_run))
    assert zlib.crc32(b"the cat saw the ball\n") == int.from_bytes(data[40:44], "little")


def test_another_model_is_refused(gru, transformer):
    data = gru.compress(mixed_text())
    with pytest.raises(UserError, match="another model"):
        transformer.decompress(data)


@pytest.mark.parametrize("damage", ["truncate", "truncate header", "append", "flip payload", "flip late payload",
                                    "flip header", "empty", "not a stream"])
def test_damaged_stream_is_refused(gru, damage):
    data = bytearray(gru.compress(mixed_text()))
    if damage == "truncate":
        data = data[:-4]
    elif damage == "truncate header":
        data = data[:40]
    elif damage == "append":
        data += b"\0\0\0\1"
    elif damage == "flip payload":
        data[120] ^= 0x01
    elif damage == "flip late payload":
        data[len(data) // 2] ^= 0x40
    elif damage == "flip header":
        data[44] ^= 0x01
    elif damage == "empty":
        data = b""
    else:
        data = b"hello world, this is plain text and no compressed stream at all" * 3
    with pytest.raises(UserError) as error:
        gru.decompress(bytes(data))
    assert "\n" not in str(error.value)


def test_every_single_bit_flip_in_a_small_stream_is_caught(gru):
    data = gru.compress("the cat saw the ball\n the old man liked a red car \n\nzebra\n", lanes=2)
    for position in range(len(data)):
        damaged = bytearray(data)
        damaged[position] ^= 1 << (position % 8)
        with pytest.raises(UserError):
            gru.decompress(bytes(damaged))


_CODE = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from textvae import TextVAE
vae = TextVAE.from_pretrained(sys.argv[2])
if sys.argv[3] == "compress":
    text = open(sys.argv[4], encoding="utf-8", newline="").read()
    open(sys.argv[5], "wb").write(vae.compress(text, lanes=int(sys.argv[6])))
else:
    open(sys.argv[5], "w", encoding="utf-8", newline="").write(vae.decompress(open(sys.argv[4], "rb").read()))
"""


def _in_process(*args) -> None:
    result = subprocess.run([sys.executable, "-c", _CODE, *map(str, args)], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("run", ["gru_run", "transformer_run"])
def test_deterministic_across_processes_and_threads(request, run, tmp_path):
    """Compress with 1 torch thread and with 2 in separate processes: the same bytes; each
    decompresses in a third process with the other thread count."""
    model = request.getfixturevalue(run)
    source = tmp_path / "in.txt"
    source.write_bytes(mixed_text().encode("utf-8"))
    _in_process(1, model, "compress", source, tmp_path / "one.tvz", 5)
    _in_process(2, model, "compress", source, tmp_path / "two.tvz", 5)
    assert (tmp_path / "one.tvz").read_bytes() == (tmp_path / "two.tvz").read_bytes()
    _in_process(2, model, "decompress", tmp_path / "one.tvz", tmp_path / "out.txt", 0)
    assert (tmp_path / "out.txt").read_bytes() == source.read_bytes()
    assert torch.get_num_threads() == 1  # coding restores the caller's thread count


def test_cli_compress_decompress(gru_run, tmp_path):
    source = tmp_path / "in.txt"
    source.write_bytes(mixed_text().encode("utf-8"))
    model = ["--model", str(gru_run)]
    result = run_main(["compress", str(source), "-o", "in.tvz", *model], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "bits per character" in result.stderr
    result = run_main(["decompress", "in.tvz", "-o", "out.txt", *model], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.txt").read_bytes() == source.read_bytes()
    piped = subprocess.run([sys.executable, "-m", "textvae.cli", "decompress", "in.tvz", *model], cwd=tmp_path,
                           capture_output=True, timeout=120)
    assert piped.returncode == 0 and piped.stdout == source.read_bytes()


def test_cli_errors_are_one_line_and_keep_existing_output(gru_run, tmp_path):
    model = ["--model", str(gru_run)]
    (tmp_path / "bad.txt").write_bytes(b"fine line\nbad \xff byte\n")
    (tmp_path / "keep.tvz").write_bytes(b"previous")
    result = run_main(["compress", "bad.txt", "-o", "keep.tvz", *model], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["textvae: error: bad.txt line 2 is not valid UTF-8 (byte 0xff)"]
    assert (tmp_path / "keep.tvz").read_bytes() == b"previous"
    (tmp_path / "good.txt").write_text("the cat saw the ball\n")
    assert run_main(["compress", "good.txt", "-o", "good.tvz", *model], cwd=tmp_path).returncode == 0
    (tmp_path / "cut.tvz").write_bytes((tmp_path / "good.tvz").read_bytes()[:-2])
    (tmp_path / "keep.txt").write_text("previous")
    result = run_main(["decompress", "cut.tvz", "-o", "keep.txt", *model], cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "truncated" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "previous"
    result = run_main(["decompress", "missing.tvz", *model], cwd=tmp_path)
    assert result.returncode == 2 and "not found" in result.stderr


@pytest.mark.parametrize("bits", [1, 3, 8, 12])
def test_quantised_codes_round_trip(bits):
    codes = torch.randn(50, 7, generator=torch.Generator().manual_seed(0))
    packed = quantize_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.shape == (50, math.ceil(7 * bits / 8))
    restored = dequantize_codes(packed, bits, 7)
    assert restored.shape == codes.shape and restored.dtype == torch.float32
    # Same bin under the prior's CDF: |Phi(restored) - Phi(code)| is at most half a bin.
    normal = torch.distributions.Normal(0.0, 1.0)
    assert (normal.cdf(restored) - normal.cdf(codes)).abs().max() <= 0.5 / 2**bits + 1e-6
    assert torch.equal(dequantize_codes(quantize_codes(restored, bits), bits, 7), restored)


def test_cli_encode_bits_and_decode(gru_run, tmp_path):
    sentences = synthetic_sentences(5, seed=3)
    (tmp_path / "in.txt").write_text("\n".join(sentences) + "\n")
    model = ["--model", str(gru_run)]
    result = run_main(["encode", "in.txt", "--out", "codes.npy", "--bits", "6", *model], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    archive = np.load(tmp_path / "codes.npy")
    assert int(archive["bits"]) == 6 and archive["packed"].shape == (5, 6)  # 8 dims x 6 bits = 6 bytes
    result = run_main(["decode", "codes.npy", *model], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 5
    result = run_main(["encode", "in.txt", "--out", "x.npy", "--bits", "0", *model], cwd=tmp_path)
    assert result.returncode == 2 and "--bits" in result.stderr
