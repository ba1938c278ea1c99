"""The `textvae` command: argument parsing only, then calls into training.py and api.py.

Results go to stdout, diagnostics to stderr. Errors a user can cause (`UserError`, bad
arguments) print one line, `textvae: error: ...`, and exit with status 2; `--debug` shows the
traceback instead. Interrupted training exits 130 (SIGINT) or 143 (SIGTERM) after saving.
Every command that loads a model takes `--device` (device.resolve_device), checked right after
parsing, so a bad or absent device fails before any input is read, any model loaded or any
output written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from textvae.errors import Interrupted, UserError
from textvae.files import atomic_path, atomic_write_bytes

log = logging.getLogger("textvae")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UserError(f"{self.prog.replace('textvae ', '')}: {message}")


class _Formatter(logging.Formatter):
    def format(self, record):
        prefix = "textvae: " if record.levelno < logging.WARNING else f"textvae: {record.levelname.lower()}: "
        return prefix + record.getMessage()


def read_input_lines(source: str) -> list[str]:
    """Lines of FILE, or of stdin for '-'; non-UTF-8 bytes fail naming the line (data.utf8_lines)."""
    from textvae.data import utf8_lines

    if source == "-":
        return [text for line in utf8_lines(sys.stdin.buffer, "<stdin>") for text in line.splitlines()]
    path = Path(source)
    if not path.is_file():
        raise UserError(f"input file not found: {source}")
    with open(path, "rb") as handle:
        return [text for line in utf8_lines(handle, source) for text in line.splitlines()]


def read_nonempty_lines(source: str, flag: str = "") -> list[str]:
    """The non-empty lines of FILE; a missing file or one with no such line is a UserError
    (prefixed with `flag`, the option that named the file, where given)."""
    prefix = f"{flag}: " if flag else ""
    if not Path(source).is_file():
        raise UserError(f"{prefix}file not found: {source}")
    lines = [line for line in read_input_lines(source) if line.strip()]
    if not lines:
        raise UserError(f"{prefix}{source} has no non-empty lines")
    return lines


def read_input_text(source: str) -> str:
    """All of FILE (or stdin for '-') as one exact string; non-UTF-8 bytes fail naming the line."""
    from textvae.data import utf8_lines

    if source == "-":
        return "".join(utf8_lines(sys.stdin.buffer, "<stdin>"))
    path = Path(source)
    if not path.is_file():
        raise UserError(f"input file not found: {source}")
    with open(path, "rb") as handle:
        return "".join(utf8_lines(handle, source))


def write_output(target: str, data: bytes) -> None:
    """`data` to stdout for '-', else to `target` atomically (a temporary sibling, then a rename)."""
    if target == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    out = Path(target)
    try:
        atomic_write_bytes(out, data)
    except OSError as error:
        raise UserError(f"cannot write {out} ({error.strerror})") from None


def _emit(lines, fmt: str = "text", key: str = "text") -> None:
    for line in lines:
        print(json.dumps({key: line}, ensure_ascii=False) if fmt == "jsonl" else line, flush=False)
    sys.stdout.flush()


def cmd_train(args, rest: list[str]) -> None:
    from textvae.config import dump_config, load_config

    config = load_config(args.config, rest)
    if args.print_config:
        print(dump_config(config), end="")
        return
    from textvae.training import train

    if not args.debug:  # Lightning's start-up chatter (accelerator, tips) is noise here; set after its import
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
    run_dir = train(config, resume=args.resume, overwrite=args.overwrite)
    log.info("run directory: %s", run_dir)


def _decoding(args) -> dict:
    strategy = args.strategy or ("sample" if args.command == "generate" else "greedy")
    return {"strategy": strategy, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
            "beam_size": args.beam_size, "max_length": args.max_length}


def _load(args):
    from textvae.api import TextVAE

    return TextVAE.from_pretrained(args.model, device=args.device, precision=args.precision)


def cmd_generate(args, rest) -> None:
    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    from textvae.api import check_decoding

    check_decoding(**_decoding(args))
    vae = _load(args)
    _emit(vae.iter_samples(args.n, seed=args.seed, batch_size=args.batch_size, **_decoding(args)), args.format)


def cmd_interpolate(args, rest) -> None:
    vae = _load(args)
    path = vae.interpolate(args.a, args.b, steps=args.steps, method=args.method, **_decoding(args))
    _emit(path, args.format)


def cmd_reconstruct(args, rest) -> None:
    lines = read_input_lines(args.input)
    vae = _load(args)
    _emit(vae.reconstruct(lines, **_decoding(args)), args.format)


def cmd_encode(args, rest) -> None:
    lines = read_input_lines(args.input)
    if args.bits is not None:
        from textvae.quantize import check_bits

        check_bits(args.bits)
    vae = _load(args)
    codes = vae.encode(lines).cpu().numpy().astype("float32")
    out = Path(args.out)
    try:
        with atomic_path(out, suffix=".npy") as tmp:
            _save_codes(tmp, codes, args.bits)
    except OSError as error:
        raise UserError(f"cannot write {out} ({error.strerror})") from None
    log.info("wrote %d codes of size %d to %s", *codes.shape, out)


def _save_codes(path: Path, codes, bits: int | None) -> None:
    """float32 codes as .npy, or with `bits` an .npz archive (under the name given) of the packed
    B-bit codes and B (quantize.quantize_codes)."""
    import numpy as np

    if bits is None:
        np.save(path, codes)
        return
    import torch

    from textvae.quantize import quantize_codes

    with open(path, "wb") as handle:
        np.savez(handle, packed=quantize_codes(torch.from_numpy(codes), bits), bits=bits)


def cmd_decode(args, rest) -> None:
    import numpy as np

    try:
        codes = np.load(args.codes, allow_pickle=False)
        if isinstance(codes, np.lib.npyio.NpzFile):  # written by `encode --bits`
            packed, bits = codes["packed"], int(codes["bits"])
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"cannot read codes from {args.codes} ({error})") from None
    vae = _load(args)
    if isinstance(codes, np.lib.npyio.NpzFile):
        from textvae.quantize import dequantize_codes

        codes = dequantize_codes(packed, bits, vae.latent_dim)
    _emit(vae.decode(codes, **_decoding(args)), args.format)


def cmd_compress(args, rest) -> None:
    text = read_input_text(args.input)
    vae = _load(args)
    data = vae.compress(text, lanes=args.lanes, parts=args.parts)
    write_output(args.output, data)
    log.info("%d bytes -> %d bytes (%.3f bits per character)", len(text.encode("utf-8")), len(data),
             8 * len(data) / max(len(text), 1))


def cmd_decompress(args, rest) -> None:
    if args.input == "-":
        data = sys.stdin.buffer.read()
    elif not Path(args.input).is_file():
        raise UserError(f"input file not found: {args.input}")
    else:
        data = Path(args.input).read_bytes()
    vae = _load(args)
    write_output(args.output, vae.decompress(data).encode("utf-8"))


def cmd_score(args, rest) -> None:
    from textvae.anomaly import DEFAULT_SCORE, NO_BACKGROUND, check_scores

    names = check_scores(args.by) if args.by else None
    if names and "ratio" in names and args.background is None:
        raise UserError(NO_BACKGROUND)
    lines = read_input_lines(args.input)
    vae = _load(args)
    compared = names[0] if names else DEFAULT_SCORE  # what the threshold and the flag are about
    threshold = args.threshold
    if args.percentile is not None:
        threshold = vae.anomaly_threshold(args.percentile, by=compared, background=args.background)
    if names is None:  # nll and nll per token, as before --by existed
        nll, tokens = vae.score(lines, iw_samples=args.iw_samples, seed=args.seed)
        columns = {"nll": nll.double(), "nll_per_token": nll.double() / tokens}
    else:
        columns = vae.score(lines, iw_samples=args.iw_samples, seed=args.seed,
                            by=list(dict.fromkeys([*names, DEFAULT_SCORE, "length"])), background=args.background)
        tokens = columns["length"].long()
    shown = names or ["nll", DEFAULT_SCORE]
    for row, line in enumerate(lines):
        anomaly = None if threshold is None else float(columns[compared][row]) > threshold
        if args.format == "jsonl":
            print(json.dumps({"text": line, **{name: float(columns[name][row]) for name in shown},
                              "tokens": int(tokens[row]), "anomaly": anomaly}, ensure_ascii=False))
        else:
            flag = "-" if anomaly is None else ("ANOMALY" if anomaly else "ok")
            print(f"{float(columns[shown[0]][row]):.3f}\t{float(columns[DEFAULT_SCORE][row]):.4f}\t{int(tokens[row])}\t"
                  f"{flag}\t{line}")


def cmd_evaluate_ood(args, rest) -> None:
    from textvae.anomaly import NO_BACKGROUND, SCORES, check_scores

    names = check_scores(args.by or [name for name in SCORES if name != "ratio" or args.background])
    if "ratio" in names and args.background is None:
        raise UserError(NO_BACKGROUND)
    sides = {flag: read_nonempty_lines(source, flag)
             for flag, source in (("--in-domain", args.in_domain), ("--out-of-domain", args.out_of_domain))}
    vae = _load(args)
    results = vae.ood_metrics(sides["--in-domain"], sides["--out-of-domain"], by=names, iw_samples=args.iw_samples,
                              seed=args.seed, background=args.background)
    if args.json:
        print(json.dumps(results))
        return
    print(f"{'score':<14} {'auroc':>7} {'aupr':>7} {'fpr95':>7}")
    for name, row in results.items():
        print(f"{name:<14} {row['auroc']:>7.4f} {row['aupr']:>7.4f} {row['fpr95']:>7.4f}")


def cmd_evaluate(args, rest) -> None:
    from textvae.api import evaluate_model

    metrics = evaluate_model(args.model, args.split, args.iw_samples, args.seed, args.precision, args.device,
                             max_sentences=args.max_sentences, prior_samples=args.prior_samples,
                             bleu_sentences=args.bleu_sentences, interp_pairs=args.interp_pairs,
                             rec_beam=args.rec_beam)
    if args.json:
        print(json.dumps(metrics))
        return
    for key, value in metrics.items():
        print(f"{key:<18} {value:.4f}" if isinstance(value, float) else f"{key:<18} {value}")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser = _Parser(prog="textvae", description="A text variational autoencoder for sentences.",
                     parents=[common])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", parents=[common], help="train a model from a YAML config",
                                description="Train; dotted flags override config keys, e.g. --model.latent_dim 32.")
    train.add_argument("--config", required=True, help="YAML config file (see configs/)")
    train.add_argument("--resume", action="store_true", help="continue from the run's checkpoints/last.ckpt")
    train.add_argument("--overwrite", action="store_true", help="start again in an existing run directory")
    train.add_argument("--print_config", action="store_true", help="print the merged config and exit")
    train.set_defaults(handler=cmd_train)

    model = _Parser(add_help=False)
    model.add_argument("--model", default="runs/latest", help="model or run directory (default: runs/latest)")
    model.add_argument("--precision", choices=("32", "bf16"), default="32",
                       help="bf16: bfloat16 autocast, about 3x faster on GPUs and CPUs with bf16 units "
                            "(float32 on CPUs without)")
    model.add_argument("--device", default="auto",
                       help="auto (CUDA when available, else MPS, else CPU), cpu, cuda, cuda:N or mps; all the "
                            "command's work runs there")
    decoding = _Parser(add_help=False)
    # No default here: the parent's actions are shared by every subcommand, so a per-command
    # default (sample for generate, greedy otherwise) is applied in _decoding.
    decoding.add_argument("--strategy", default=None,
                          help="greedy, sample or beam (default: sample for generate, greedy otherwise)")
    decoding.add_argument("--temperature", type=float, default=1.0, help="softmax temperature for sampling")
    decoding.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    decoding.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    decoding.add_argument("--beam-size", type=int, default=4, help="beams for --strategy beam")
    decoding.add_argument("--max-length", type=int, default=None,
                          help="longest output in tokens (default 50; a transformer decoder allows at most its "
                               "model.decoder.max_positions)")
    decoding.add_argument("--format", choices=("text", "jsonl"), default="text", help="output format")

    generate = commands.add_parser("generate", parents=[common, model, decoding],
                                   help="sample sentences from the prior")
    generate.add_argument("--n", type=int, default=20, help="number of sentences")
    generate.add_argument("--seed", type=int, default=None, help="random seed (same seed, same output)")
    generate.add_argument("--batch-size", type=int, default=500, help="sentences decoded together")
    generate.set_defaults(handler=cmd_generate)

    interpolate = commands.add_parser("interpolate", parents=[common, model, decoding],
                                      help="decode the latent path between two sentences")
    interpolate.add_argument("a", help="first sentence")
    interpolate.add_argument("b", help="last sentence")
    interpolate.add_argument("--steps", type=int, default=8, help="intermediate points")
    interpolate.add_argument("--method", default="slerp", help="slerp or linear")
    interpolate.set_defaults(handler=cmd_interpolate)

    for name, handler, text in (("reconstruct", cmd_reconstruct, "encode (posterior mean) and decode each line"),
                                ("encode", cmd_encode, "write each line's posterior mean to a .npy file")):
        sub = commands.add_parser(name, parents=[common, model, decoding], help=text)
        sub.add_argument("input", nargs="?", default="-", help="input file, one sentence per line (- for stdin)")
        if name == "encode":
            sub.add_argument("--out", required=True, help="output .npy file (float32, n x latent_dim)")
            sub.add_argument("--bits", type=int, default=None,
                             help="quantise each dimension to B bits (1-16; equal-mass bins of the prior) and write "
                                  "an .npz archive of the packed codes under the --out name")
        sub.set_defaults(handler=handler)

    decode = commands.add_parser("decode", parents=[common, model, decoding], help="decode codes from a .npy file")
    decode.add_argument("codes", help=".npy file written by textvae encode")
    decode.set_defaults(handler=cmd_decode)

    compress = commands.add_parser("compress", parents=[common, model],
                                   help="losslessly compress UTF-8 text with bits-back coding")
    compress.add_argument("input", nargs="?", default="-", help="input file (- for stdin)")
    compress.add_argument("-o", "--output", required=True, help="compressed file (- for stdout)")
    compress.add_argument("--lanes", type=int, default=64,
                          help="lines coded in lockstep (the batch size of decompression)")
    compress.add_argument("--parts", type=int, default=2,
                          help="independent parts coded in parallel threads, one per core (each at least "
                               "4 x lanes lines; default 2)")
    compress.set_defaults(handler=cmd_compress)
    decompress = commands.add_parser("decompress", parents=[common, model],
                                     help="restore the exact text of a compressed file")
    decompress.add_argument("input", help="compressed file (- for stdin)")
    decompress.add_argument("-o", "--output", default="-", help="output file (default: stdout)")
    decompress.set_defaults(handler=cmd_decompress)

    score = commands.add_parser("score", parents=[common, model], help="per-line NLL; flag anomalies")
    score.add_argument("input", nargs="?", default="-", help="input file (- for stdin)")
    score.add_argument("--iw-samples", type=int, default=None,
                       help="importance samples K (1: single-sample ELBO; default: the K of the model's stored "
                            "validation quantiles, so --percentile compares like with like, else 100)")
    flag = score.add_mutually_exclusive_group()
    flag.add_argument("--threshold", type=float, default=None, help="flag lines above X nats per token")
    flag.add_argument("--percentile", type=float, default=None,
                      help="flag lines above this percentile of the validation split's nats per token")
    score.add_argument("--seed", type=int, default=0, help="random seed of the importance samples")
    score.add_argument("--format", choices=("text", "jsonl"), default="text",
                       help="text: nll (or the --by score), nll/token, tokens, flag, sentence (tab-separated)")
    score.add_argument("--by", nargs="+", metavar="SCORE",
                       help="anomaly scores (higher = more anomalous): nll, nll_per_token, rate, rec, typicality, "
                            "complexity, ratio (with --background), length; the first takes the nll column and the "
                            "threshold, jsonl prints every one (default: nll and nll_per_token, the threshold on "
                            "nll_per_token)")
    score.add_argument("--background", metavar="MODEL",
                       help="the background of --by ratio: unigram, a textvae model directory, or a HF causal LM "
                            "directory or .gguf file")
    score.set_defaults(handler=cmd_score)

    ood = commands.add_parser("evaluate-ood", parents=[common, model],
                              help="AUROC, AUPR and FPR@95 of anomaly scores, in-domain vs out-of-domain lines")
    ood.add_argument("--in-domain", required=True, help="file of in-domain lines (one sentence per line)")
    ood.add_argument("--out-of-domain", required=True, help="file of out-of-domain lines (the positives)")
    ood.add_argument("--by", nargs="+", metavar="SCORE",
                     help="scores to report (default: all, ratio with --background); length always")
    ood.add_argument("--background", metavar="MODEL",
                     help="the background of ratio: unigram, a textvae model, or a HF causal LM directory or .gguf file")
    ood.add_argument("--iw-samples", type=int, default=None,
                     help="importance samples K (default: the K of the model's validation statistics, else 100)")
    ood.add_argument("--seed", type=int, default=0, help="random seed of the importance samples")
    ood.add_argument("--json", action="store_true", help="one JSON object: score -> auroc, aupr, fpr95")
    ood.set_defaults(handler=cmd_evaluate_ood)

    evaluate = commands.add_parser("evaluate", parents=[common, model], help="the metric table (docs/metrics.md)")
    evaluate.add_argument("--split", default="test", help="train, valid or test")
    evaluate.add_argument("--iw-samples", type=int, default=500, help="importance samples K for nll/ppl")
    evaluate.add_argument("--seed", type=int, default=0, help="random seed")
    evaluate.add_argument("--max-sentences", type=int, help="evaluate only the first N sentences of the split")
    evaluate.add_argument("--prior-samples", type=int,
                          help="prior samples behind distinct-n and novel (0: skip them; default: the model's eval)")
    evaluate.add_argument("--bleu-sentences", type=int,
                          help="sentences whose reconstructions give rec_bleu (0: all; default: the model's eval)")
    evaluate.add_argument("--interp-pairs", type=int,
                          help="sentence pairs behind interp_distinct/step (0: skip; default: the model's eval)")
    evaluate.add_argument("--rec-beam", type=int,
                          help="beam width for rec_bleu_beam/rec_exact_beam (0: skip; default: the model's eval)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(handler=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    if not debug:
        warnings.filterwarnings("ignore", message=".*treespec.*LeafSpec.*")
    try:
        parser = build_parser()
        args, rest = parser.parse_known_args(argv)
        if rest and args.command != "train":
            raise UserError(f"{args.command}: unrecognized arguments: {' '.join(rest)}")
        if hasattr(args, "device"):  # before any work: a bad device reads, loads and writes nothing
            from textvae.device import resolve_device

            args.device = resolve_device(args.device)
        args.handler(args, rest)
    except UserError as error:
        if debug:
            raise
        print(f"textvae: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `textvae generate --n 1000 | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Interrupted as error:
        print(f"textvae: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print("textvae: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
