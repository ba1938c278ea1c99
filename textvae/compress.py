"""Lossless compression of any UTF-8 text with a trained TextVAE: bits-back ANS coding (BB-ANS,
Townsend, Bird & Barber 2019) through `constriction`'s stack coder; plus the B-bit quantiser of
`textvae encode --bits`.

How a line is coded. The text is cut at "\\n" (whether it ends with one is a header bit). A line
whose tokens decode back to it exactly (`decode_ids(encode(line))`, at most `max_words` tokens,
optionally with one leading and/or one trailing space, as in PTB's files) takes the model path,
in BB-ANS order: pop z from the stack with the discretised posterior q(z|x), push the tokens
with p(x|z) (the decoder run step by step, exactly as the decompressor runs it), push z with the
discretised prior. The net cost is -log p(x|z) - log p(z) + log q(z|x) bits, the negative ELBO
for that z. Every other line (unknown words, other spacing, empty lines, tabs, unicode the
vocabulary lacks) takes the escape path: its UTF-8 bytes and an end symbol under an adaptive
byte model (order-1 counts with the previous byte of the line as context, mixed with adaptive
order-0 counts, shared across the file). A per-line flag (escape, or one of the four spacing
forms) is coded with the empirical flag frequencies stored in the header.

Latent discretisation. Both q(z|x) and the prior N(0, I) are `QuantizedGaussian`s over the
integers in [-z_range * 2^grid, z_range * 2^grid]: z is coded in units of delta = 2^-grid
(default 2^-8) on [-8, 8]. With bins this fine against the posterior widths, P(bin) is density
times delta for both distributions, the deltas cancel in the bits-back difference, and what is
left over the ELBO is the discretisation error (measured by scripts/bench_compress.py).

Lanes, not one chain. Bits-back chains are sequential, so the file is dealt into `lanes`
contiguous runs of lines (default 64) that are coded in lockstep rounds on ONE interleaved stack:
round r holds line r of every lane. The encoder runs on a batch of exactly `lanes` rows (rows
without a model line get a fixed dummy); the decoder steps run on the round's model lines that
are still running, in lane order, so a finished line costs nothing. Both batch shapes are fixed
by what the decompressor has already decoded (the header, the flags, the tokens so far), so it
makes the same calls on the same shapes and computes bit-identical probabilities.

Parts, for the cores. A file of at least 4 x lanes lines per part is cut at line boundaries into
`parts` (default 2) contiguous pieces, each coded as an independent stream with its own stack and
byte model, and the streams are written one after the other. Compressor and decompressor code the
parts in parallel threads, each making single-threaded torch calls, so a 2-core CPU runs two
decoders at once; each part's probabilities depend only on its own calls, so the result is the
same whatever runs beside it. Each part pays its own start-up (its first round at z = 0).

Paying for the codes. Popping a round's codes takes about 32 x (grid + 2) bits per line, more
than a line costs in all, so early rounds find too few bits on the stack (round 0 finds none).
A pop from an exhausted stack still decodes, but to junk codes at the edge of the range that are
then expensive to push under the prior: in version 1 of the format this cost 5% on PTB. So each
round pops codes only for the longest prefix of its model lines whose estimated pop cost (the
entropy of each discretised posterior) fits in the bits on the stack; the rest are coded with
z = 0 and no bits back, and the prefix length is coded in the round, before the codes. z = 0
costs -log p(x|z=0) over the line's ELBO: a few nats for a model with a small KL, more for a
high-rate one. That start-up happens in the first one or two rounds only.

Determinism. Compressor and decompressor must compute identical float32 probabilities: no
autocast (bf16 is never used here), the same step-by-step decoder calls on both sides (never
teacher forcing), the same batch shapes, and on a CPU one torch thread while coding (MKL's
results change with the thread count). Probabilities are quantised by constriction. A stream is
tied to the model (sha256 over its weights and vocabulary) and to the device kind (cpu, cuda or
mps: the model's device, `--device` in the CLI) it was made on; both are in the header and
checked. All model work stays on that device; only the per-step probabilities come back to the
CPU, where constriction codes them.

Format (version 3), little-endian: the parts' streams one after the other, each

    magic "TVBB", version u8, fingerprint 32 bytes, device u8 (0 cpu, 1 cuda, 2 mps), grid u8,
    z_range u8, crc32 of the part's original UTF-8 bytes u32, their length u64, lines u32,
    lanes u32, ends-with-newline u8, flag counts 5 x u32 (escape, plain, " x", "x ", " x "),
    part u16, parts u16, words u64, crc32 of the header so far u32; then `words` u32 words of
    the part's ANS stack.

Version 2 was the same with one part and no part fields.

A damaged or truncated stream, or another model, is a `UserError` (one line, exit 2 in the CLI),
never wrong text: each header has its own checksum and numbers its part (so a missing part is
caught), decoding checks every bound it relies on, each stack must end exactly empty, and each
part's text must match its stored crc32 and length.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch

from textvae.errors import UserError
from textvae.tokenizer import BOS_ID, EOS_ID, PAD_ID, decode_ids, encode_batch, pad_batch

if TYPE_CHECKING:
    from textvae.trained import TrainedModel

MAGIC = b"TVBB"
FORMAT_VERSION = 3
LANES = 64  # lines coded in lockstep: the decompressor's batch size
PARTS = 2  # independent streams coded in parallel threads (files of at least 4 x lanes lines per part)
GRID = 8  # latent bin width 2^-GRID
Z_RANGE = 8  # latent values coded on [-Z_RANGE, Z_RANGE]
ALL_PAID = 2**-10  # probability that a round pays for fewer than all of its codes (the count's model)
ESCAPE = 0
FORMS = ("{}", " {}", "{} ", " {} ")  # flags 1..4: spacing of a model-path line around its tokens
END = 256  # the byte model's end-of-line symbol
LINE_START = 256  # the byte model's context at the start of a line
ORDER0_WEIGHT = 2.0  # pseudo-counts an order-1 context starts with, spread like the order-0 counts
_HEADER = struct.Struct("<4sB32sBBBIQIIB5IHHQ")
HEADER_SIZE = _HEADER.size + 4
_DEVICES = {"cpu": 0, "cuda": 1, "mps": 2}


def fingerprint(vae: "TrainedModel") -> bytes:
    """sha256 over the weights (name, dtype, shape, bytes, in name order) and the vocabulary."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(sorted(vae.tokenizer.get_vocab().items())).encode())
    return digest.digest()


def compress(vae: "TrainedModel", text: str, lanes: int = LANES, parts: int = PARTS) -> bytes:
    """`text` as a self-checking bits-back stream for this model (see the module docstring)."""
    return compress_with_startup(vae, text, lanes, parts)[0]


def compress_with_startup(vae: "TrainedModel", text: str, lanes: int = LANES,
                          parts: int = PARTS) -> tuple[bytes, list[int]]:
    """`compress`, plus the (0-based) numbers of the model-path lines that were coded with z = 0 and
    no bits back because the stack could not yet pay for their codes (for accounting the overhead)."""
    if not isinstance(text, str):
        raise TypeError(f"compress takes a str, got {type(text).__name__}")
    if lanes < 1:
        raise UserError(f"lanes must be at least 1, got {lanes}")
    if not 1 <= parts <= 2**16 - 1:
        raise UserError(f"parts must be between 1 and 65535, got {parts}")
    if vae.config.model.decoder.type == "pretrained":  # the coder frames lines with textvae's own special ids
        raise UserError("compress: models with a pretrained decoder (model.decoder.type: pretrained) are not "
                        "supported yet")
    (pieces, firsts), stamp = _cut(text, parts, lanes), fingerprint(vae)
    jobs = [(piece, lanes, part, len(pieces), stamp) for part, piece in enumerate(pieces)]
    results = _in_parallel(vae, jobs, _compress_part)
    unpaid = [first + line for first, (_, lines) in zip(firsts, results) for line in lines]
    return b"".join(data for data, _ in results), unpaid


def parts_of(data: bytes) -> int:
    """How many parts a stream has, from its first header (unchecked: for accounting)."""
    return _HEADER.unpack_from(data)[-2]


def _cut(text: str, parts: int, lanes: int) -> tuple[list[str], list[int]]:
    """`text` cut at line starts into at most `parts` pieces of about equal line counts, each of at
    least 4 x lanes lines (one piece for a small text), which join back to `text`; and the number
    of each piece's first line."""
    lengths = [len(line) + 1 for line in split_lines(text)[0]]
    starts = np.cumsum([0, *lengths]).tolist()  # where each line starts (and the end, plus one)
    lines = len(lengths)
    count = max(1, min(parts, lines // (4 * lanes)))
    firsts = [lines * part // count for part in range(count)]
    bounds = [starts[first] for first in firsts[1:]]
    return [text[a:b] for a, b in zip([0, *bounds], [*bounds, len(text)])], firsts


def _in_parallel(vae: "TrainedModel", jobs: list[tuple], work) -> list:
    """`work(vae, *job)` for each job, in threads (one per job, at most one per core). Torch runs
    single-threaded on a CPU meanwhile, so every call computes what it would compute alone."""
    threads = torch.get_num_threads()
    if vae.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        if len(jobs) == 1:
            return [work(vae, *jobs[0])]
        with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
            return list(pool.map(lambda job: work(vae, *job), jobs))
    finally:
        torch.set_num_threads(threads)


def _compress_part(vae: "TrainedModel", text: str, lanes: int, part: int, parts: int,
                   stamp: bytes) -> tuple[bytes, list[int]]:
    """One part's stream (header and stack) and its lines coded at z = 0, numbered within the part."""
    raw = text.encode("utf-8")
    lines, final_newline = split_lines(text)
    flags, tokens = classify(vae, lines)
    layout = Layout(len(lines), min(lanes, len(lines)))
    counts = [flags.count(flag) for flag in range(len(FORMS) + 1)]
    coder = _Coder(vae, counts, GRID, Z_RANGE)
    escaped = [list(line.encode("utf-8")) if flag == ESCAPE else None for line, flag in zip(lines, flags)]
    for symbols in escaped:
        if symbols is not None:
            coder.bytes.add(symbols, +1)
    with coder.computing():
        for round_ in range(layout.rounds):
            coder.push_round(layout, round_, flags, tokens, escaped)
    words = coder.ans.get_compressed().astype("<u4")
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, stamp, _device_code(vae), GRID, Z_RANGE,
                          zlib.crc32(raw), len(raw), len(lines), layout.lanes, final_newline, *counts, part, parts,
                          len(words))
    return header + struct.pack("<I", zlib.crc32(header)) + words.tobytes(), coder.unpaid


def decompress(vae: "TrainedModel", data: bytes) -> str:
    """The text `compress` was given; a `UserError` for another model or a damaged stream."""
    data = bytes(data)
    jobs, offset, parts, stamp = [], 0, 1, fingerprint(vae)
    while len(jobs) < parts:
        header = _read_header(vae, data, offset, len(jobs), parts if jobs else None, stamp)
        parts = header["parts"]
        jobs.append((data, offset, header))
        offset += HEADER_SIZE + 4 * header["words"]
    if offset != len(data):
        raise UserError(f"compressed stream has trailing bytes ({len(data)} bytes, its headers say {offset})")
    return "".join(_in_parallel(vae, jobs, _decompress_part))


def _read_header(vae: "TrainedModel", data: bytes, offset: int, part: int, parts: int | None, stamp: bytes) -> dict:
    """The checked header of part `part` at `offset` (`parts`: the count part 0 gave, None for part 0;
    `stamp`: this model's fingerprint)."""
    if not data or data[:4] != MAGIC[: len(data)]:
        raise UserError("not a textvae compressed stream (no TVBB magic)")
    if len(data) - offset < HEADER_SIZE:
        raise UserError(f"compressed stream is truncated ({len(data)} bytes, shorter than its headers)")
    fields = _HEADER.unpack_from(data, offset)
    if fields[0] != MAGIC:
        raise UserError("compressed stream is corrupted (no TVBB magic where a part should start)")
    if fields[1] != FORMAT_VERSION:
        raise UserError(f"compressed stream has format version {fields[1]}, this textvae reads {FORMAT_VERSION}")
    if struct.unpack_from("<I", data, offset + _HEADER.size)[0] != zlib.crc32(data[offset: offset + _HEADER.size]):
        raise UserError("compressed stream is corrupted (header checksum mismatch)")
    _, _, stored_print, device, grid, z_range, crc, size, n_lines, lanes, final_newline, *rest = fields
    counts, this_part, n_parts, n_words = list(rest[:5]), rest[5], rest[6], rest[7]
    if stored_print != stamp:
        raise UserError(f"compressed stream was made with another model (fingerprint {stored_print.hex()[:16]}, "
                        f"this model is {stamp.hex()[:16]}); decompress with the same model")
    if device != _device_code(vae):
        names = {code: name for name, code in _DEVICES.items()}
        raise UserError(f"compressed stream was made on {names.get(device, device)}; decompress it on the same "
                        f"kind of device (probabilities differ between devices)")
    if this_part != part or not n_parts or (parts is not None and n_parts != parts):
        raise UserError("compressed stream is corrupted (its parts are out of order or missing)")
    if len(data) < offset + HEADER_SIZE + 4 * n_words:
        raise UserError(f"compressed stream is truncated ({len(data)} bytes, its headers say at least "
                        f"{offset + HEADER_SIZE + 4 * n_words})")
    if sum(counts) != n_lines or lanes > n_lines or (n_lines and not lanes) or grid > 16 or not z_range:
        raise UserError("compressed stream is corrupted (inconsistent header)")
    return {"grid": grid, "z_range": z_range, "crc": crc, "size": size, "lines": n_lines, "lanes": lanes,
            "final_newline": final_newline, "counts": counts, "parts": n_parts, "words": n_words}


def _decompress_part(vae: "TrainedModel", data: bytes, offset: int, header: dict) -> str:
    coder = _Coder(vae, header["counts"], header["grid"], header["z_range"], header["size"])
    try:
        start = offset + HEADER_SIZE
        coder.ans = _ans_coder(np.frombuffer(data, dtype="<u4", count=header["words"], offset=start).astype(np.uint32))
        layout = Layout(header["lines"], header["lanes"])
        lines: list[str | None] = [None] * header["lines"]
        with coder.computing():
            for round_ in reversed(range(layout.rounds)):
                coder.pop_round(layout, round_, lines)
        if not coder.ans.is_empty():
            raise _Corrupt
    except (_Corrupt, ValueError, OverflowError):
        raise UserError("compressed stream is corrupted (it does not decode)") from None
    text = "\n".join(lines) + ("\n" if header["final_newline"] else "")
    raw = text.encode("utf-8")
    if len(raw) != header["size"] or zlib.crc32(raw) != header["crc"]:
        raise UserError("compressed stream is corrupted (checksum of the decoded text does not match)")
    return text


def split_lines(text: str) -> tuple[list[str], bool]:
    """Lines of `text` (cut at "\\n" only) and whether it ends with "\\n"; joins back exactly."""
    if not text:
        return [], False
    lines = text.split("\n")
    final_newline = lines[-1] == ""
    if final_newline:
        lines.pop()
    return lines, final_newline


def classify(vae: "TrainedModel", lines: list[str]) -> tuple[list[int], list[list[int] | None]]:
    """Per line: its flag (ESCAPE or the 1-based FORMS index) and, on the model path, its token ids."""
    ids = encode_batch(vae.tokenizer, lines)
    flags, tokens = [], []
    for line, line_ids, canonical in zip(lines, ids, decode_ids(vae.tokenizer, ids)):
        flag = ESCAPE
        if line_ids and canonical and len(line_ids) <= vae.max_words:
            flag = next((index for index, form in enumerate(FORMS, 1) if form.format(canonical) == line), ESCAPE)
        flags.append(flag)
        tokens.append(line_ids if flag != ESCAPE else None)
    return flags, tokens


class _Corrupt(Exception):
    """The stream decodes to something impossible (caught and reported as a UserError)."""


def _ans_coder(words: np.ndarray):
    import constriction

    return constriction.stream.stack.AnsCoder(words)


def _device_code(vae: "TrainedModel") -> int:
    return _DEVICES.get(vae.device.type, 255)


class Layout:
    """Lines dealt into `lanes` contiguous runs (the first `lines % lanes` one longer)."""

    def __init__(self, lines: int, lanes: int):
        self.lanes = lanes
        base, extra = divmod(lines, lanes) if lanes else (0, 0)
        self.sizes = [base + (lane < extra) for lane in range(lanes)]
        self.starts = np.cumsum([0, *self.sizes[:-1]]).tolist() if lanes else []
        self.rounds = max(self.sizes, default=0)

    def round(self, round_: int) -> list[tuple[int, int]]:
        """(lane, line number) of each lane that has a line in this round."""
        return [(lane, self.starts[lane] + round_) for lane in range(self.lanes) if round_ < self.sizes[lane]]


class _ByteModel:
    """Adaptive byte model of escaped lines: order-1 counts (context: the previous byte of the
    line, LINE_START at its start) plus ORDER0_WEIGHT pseudo-counts spread like the adaptive
    order-0 counts. Counts are integers held in float64, so adding and removing are exact and
    both sides compute identical rows."""

    def __init__(self):
        self.order1 = np.zeros((257, 257))
        self.order0 = np.zeros(257)

    def row(self, context: int) -> np.ndarray:
        order0 = (self.order0 + 0.5) / (self.order0.sum() + 0.5 * 257)
        return self.order1[context] + ORDER0_WEIGHT * order0

    def add(self, symbols: list[int], sign: int) -> None:
        """Count (sign +1) or uncount (-1) a line's bytes (END is appended here)."""
        for context, symbol in zip([LINE_START, *symbols], [*symbols, END]):
            self.order1[context, symbol] += sign
            self.order0[symbol] += sign

    def rows(self, symbols: list[int]) -> np.ndarray:
        """The row each symbol of a line is coded with (updating as the decoder will), (n + 1, 257)."""
        rows = []
        for context, symbol in zip([LINE_START, *symbols], [*symbols, END]):
            rows.append(self.row(context))
            self.order1[context, symbol] += 1
            self.order0[symbol] += 1
        return np.stack(rows)


class _Coder:
    """One stack, the models and their constriction counterparts; `push_round` and `pop_round` are
    exact mirror images, step for step."""

    def __init__(self, vae: "TrainedModel", counts: list[int], grid: int, z_range: int, max_bytes: int | None = None):
        import constriction

        models = constriction.stream.model
        self.vae, self.model = vae, vae.model
        self.ans = constriction.stream.stack.AnsCoder()
        self.scale = float(2**grid)
        self.limit = z_range * 2**grid
        self.prior = models.QuantizedGaussian(-self.limit, self.limit, 0.0, self.scale)
        self.gaussian = models.QuantizedGaussian(-self.limit, self.limit)
        self.categorical = models.Categorical(perfect=False)
        frequencies = np.asarray(counts, dtype=np.float64) if sum(counts) else np.ones(len(counts))
        self.flag_model = models.Categorical(frequencies, perfect=False)
        self.bytes = _ByteModel()
        self.max_bytes = max_bytes  # decompressing: the decoded text's length from the header
        self.unpaid: list[int] = []  # compressing: model lines coded with z = 0 and no bits back

    @contextlib.contextmanager
    def computing(self):
        """No gradients and float32 (the one-thread setting is `_in_parallel`'s, around every part)."""
        with torch.no_grad(), torch.autocast(self.vae.device.type, enabled=False):
            yield

    # ------------------------------------------------------------------------- model pieces
    def _posterior(self, rows: list[list[int] | None]) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of q(z|x) in bin units, (lanes, D) float64, from the encoder run on all
        lanes at once (rows without a model line read `<bos> <eos>`)."""
        framed = [[BOS_ID, *ids, EOS_ID] if ids is not None else [BOS_ID, EOS_ID] for ids in rows]
        mean, logvar = self.model.encode(pad_batch(framed).to(self.vae.device))
        mean = (mean.float() * self.scale).clamp(-self.limit, self.limit)  # (L, D)
        std = (torch.exp(0.5 * logvar.float()) * self.scale).clamp(1e-2, 1e6)  # (L, D)
        return mean.cpu().double().numpy(), std.cpu().double().numpy()

    def _affordable(self, lanes: list[int], std: np.ndarray) -> list[int]:
        """The longest prefix of `lanes` whose codes the stack can pay for: each pop is estimated at
        the entropy of its discretised posterior (log2(std sqrt(2 pi e)) bits per dimension, std in
        bins), plus a margin, against the bits on the stack."""
        entropy = np.log2(std[lanes] * math.sqrt(2 * math.pi * math.e)).clip(min=0).sum(1)  # (k,) bits
        needed = np.cumsum(1.02 * entropy + 8)
        return lanes[: int(np.searchsorted(needed, self.ans.num_bits(), side="right"))]

    @staticmethod
    def _paid_row(lines: int) -> np.ndarray:
        """Probabilities of 0..lines codes paid for in a round, (1, lines + 1): nearly all on `lines`."""
        row = np.full(lines + 1, ALL_PAID / lines)
        row[lines] = 1 - ALL_PAID
        return row[None]

    def _step_probabilities(self, features: torch.Tensor) -> np.ndarray:
        logits = self.model.logits(features).float()  # (L, V)
        logits[:, [PAD_ID, BOS_ID]] = float("-inf")
        return logits.softmax(-1).cpu().numpy()

    def _run_decoder(self, lanes: list[int], codes: dict[int, np.ndarray], choose) -> dict[int, list[int]]:
        """Step the decoder for the model lines of `lanes` (z from `codes`, 0 where a lane has none)
        until each has emitted <eos>, and return each lane's tokens. The batch holds only the lanes
        still running, in lane order, so compressor and decompressor make the same calls on the
        same shapes and no step is spent on finished lines. `choose(alive, probabilities)` gives
        the next token of each running lane (the compressor's targets, the decompressor's pops)."""
        device = self.vae.device
        z = torch.zeros(len(lanes), self.model.config.latent_dim, device=device)
        for row, lane in enumerate(lanes):
            if lane in codes:
                z[row] = torch.from_numpy(codes[lane].astype(np.float32)).to(device) / self.scale
        state = self.model.decoder.start(z)
        token = torch.full((len(lanes),), BOS_ID, dtype=torch.long, device=device)
        decoded: dict[int, list[int]] = {lane: [] for lane in lanes}
        alive = list(lanes)
        for _ in range(self.vae.max_words + 1):
            features, state = self.model.decoder.step(token, state)
            symbols = choose(alive, self._step_probabilities(features))
            for lane, symbol in zip(alive, symbols):
                decoded[lane].append(symbol)
            running = [row for row, symbol in enumerate(symbols) if symbol != EOS_ID]
            if not running:
                return decoded
            if len(running) < len(alive):
                state = self.model.decoder.reorder(state, torch.tensor(running, device=device))
            alive = [alive[row] for row in running]
            token = torch.tensor([symbols[row] for row in running], dtype=torch.long, device=device)
        raise _Corrupt  # more than max_words tokens: only a damaged stream decodes to that

    # -------------------------------------------------------------------------- compressing
    def push_round(self, layout: Layout, round_: int, flags, tokens, escaped) -> None:
        present = layout.round(round_)
        model_lanes = [(lane, line) for lane, line in present if flags[line] != ESCAPE]
        for lane, line in present:
            if flags[line] == ESCAPE:
                self.bytes.add(escaped[line], -1)  # the decoder has not seen this round yet
        # 5'. bits back: pop each model line's z with its posterior (the first round has no bits to pop)
        rows: list[list[int] | None] = [None] * layout.lanes
        for lane, line in model_lanes:
            rows[lane] = tokens[line]
        codes: dict[int, np.ndarray] = {}
        if model_lanes and not self.ans.is_empty():
            mean, std = self._posterior(rows)
            picked = self._affordable([lane for lane, _ in model_lanes], std)
            if picked:
                symbols = self.ans.decode(self.gaussian, mean[picked].ravel(), std[picked].ravel())
                codes = dict(zip(picked, symbols.reshape(len(picked), -1)))
        self.unpaid += [line for lane, line in model_lanes if lane not in codes]
        # 4'. the tokens under p(x|z), from the same step-by-step decoder calls the decompressor makes
        if model_lanes:
            targets = {lane: [*tokens[line], EOS_ID] for lane, line in model_lanes}
            step_rows, step_symbols = [], []

            def choose(alive: list[int], probabilities: np.ndarray) -> list[int]:
                symbols = [targets[lane][len(step_rows)] for lane in alive]
                step_rows.append(probabilities)
                step_symbols.extend(symbols)
                return symbols

            self._run_decoder([lane for lane, _ in model_lanes], codes, choose)
            self.ans.encode_reverse(np.asarray(step_symbols, dtype=np.int32), self.categorical,
                                    np.concatenate(step_rows))
        # 3'. z under the prior, then how many lines have one
        if codes:
            self.ans.encode_reverse(np.concatenate(list(codes.values())).astype(np.int32), self.prior)
        if model_lanes:
            self.ans.encode_reverse(np.asarray([len(codes)], dtype=np.int32), self.categorical,
                                    self._paid_row(len(model_lanes)))
        # 2'. escaped lines under the byte model, rows in the decoder's order
        byte_rows, byte_symbols = [], []
        for lane, line in present:
            if flags[line] == ESCAPE:
                byte_rows.append(self.bytes.rows(escaped[line]))
                byte_symbols.extend([*escaped[line], END])
        for lane, line in present:
            if flags[line] == ESCAPE:
                self.bytes.add(escaped[line], -1)
        if byte_rows:
            self.ans.encode_reverse(np.asarray(byte_symbols, dtype=np.int32), self.categorical,
                                    np.concatenate(byte_rows))
        # 1'. the flags, popped first
        self.ans.encode_reverse(np.asarray([flags[line] for _, line in present], dtype=np.int32), self.flag_model)

    # ------------------------------------------------------------------------ decompressing
    def pop_round(self, layout: Layout, round_: int, lines: list[str | None]) -> None:
        present = layout.round(round_)
        flags = dict(zip((line for _, line in present), self.ans.decode(self.flag_model, len(present)).tolist()))
        model_lanes = [(lane, line) for lane, line in present if flags[line] != ESCAPE]
        for lane, line in present:
            if flags[line] == ESCAPE:
                lines[line] = self._pop_bytes()
        if not model_lanes:
            return
        paid = int(self.ans.decode(self.categorical, self._paid_row(len(model_lanes)))[0])
        picked = [lane for lane, _ in model_lanes[:paid]]
        dims = self.model.config.latent_dim
        codes = dict(zip(picked, self.ans.decode(self.prior, paid * dims).reshape(paid, dims)))

        def choose(alive: list[int], probabilities: np.ndarray) -> list[int]:
            symbols = self.ans.decode(self.categorical, probabilities).tolist()
            if PAD_ID in symbols or BOS_ID in symbols:
                raise _Corrupt
            return symbols

        decoded = self._run_decoder([lane for lane, _ in model_lanes], codes, choose)
        rows: list[list[int] | None] = [None] * layout.lanes
        for lane, line in model_lanes:
            rows[lane] = decoded[lane][:-1]
        if codes:  # bits back: push z with the posterior of the line just decoded
            mean, std = self._posterior(rows)
            self.ans.encode_reverse(np.concatenate([codes[lane] for lane in picked]).astype(np.int32),
                                    self.gaussian, mean[picked].ravel(), std[picked].ravel())
        texts = decode_ids(self.vae.tokenizer, [rows[lane] for lane, _ in model_lanes])
        for (lane, line), text in zip(model_lanes, texts):
            lines[line] = FORMS[flags[line] - 1].format(text)

    def _pop_bytes(self) -> str:
        symbols, context = [], LINE_START
        while True:
            row = self.bytes.row(context)
            symbol = int(self.ans.decode(self.categorical, row[None])[0])
            self.bytes.order1[context, symbol] += 1
            self.bytes.order0[symbol] += 1
            if symbol == END:
                break
            symbols.append(symbol)
            context = symbol
            if self.max_bytes is not None and len(symbols) > self.max_bytes:
                raise _Corrupt
        try:
            return bytes(symbols).decode("utf-8")
        except UnicodeDecodeError:
            raise _Corrupt from None
