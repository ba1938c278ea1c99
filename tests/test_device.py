"""--device: one resolver (device.py) behind every inference command, the API, the end-of-run
evaluation and the benchmarks. The logic is tested on the CPU; tests that need CUDA skip without it."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import textvae.device
from conftest import CONFIGS, REPO, run_main, text_overrides
from textvae import cli
from textvae.api import TextVAE
from textvae.device import resolve_device
from textvae.errors import UserError

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SENTENCES = ["the cat saw the ball", "a small bird found a red car yesterday"]


@pytest.fixture
def no_accelerators(monkeypatch):
    """This machine as one without CUDA or MPS, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(textvae.device, "_mps_available", lambda: False)


def test_auto_is_the_cpu_without_accelerators(no_accelerators):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cpu", "CPU", " cpu ", torch.device("cpu")])
def test_explicit_cpu(spec):
    assert resolve_device(spec) == torch.device("cpu")


@pytest.mark.parametrize("spec, message", [
    ("tpu", "--device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    ("cuda:x", "--device must be"), ("gpu", "--device must be"), ("", "--device must be"),
    ("meta", "--device must be"),
    ("cuda", "CUDA is not available"), ("cuda:0", "CUDA is not available"), ("cuda:7", "CUDA is not available"),
    ("mps", "MPS is not available"),
])
def test_bad_or_absent_device_is_a_user_error(no_accelerators, spec, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")) as error:
        resolve_device(spec)
    assert "\n" not in str(error.value)


def test_cuda_index_beyond_the_gpus_here(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match=r"--device cuda:7: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:7")


@needs_cuda
def test_cuda_resolves_to_an_indexed_device_with_tf32_matmuls():
    previous = torch.get_float32_matmul_precision()
    try:
        assert resolve_device("cuda") == torch.device("cuda", torch.cuda.current_device())
        assert resolve_device("cuda:0") == torch.device("cuda", 0)
        assert resolve_device("auto").type == "cuda"
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(previous)


def test_bf16_is_native_on_cuda_only_with_support_and_on_the_cpu_as_onednn_says(monkeypatch, cpu_bf16):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert not textvae.device.fast_bf16(torch.device("cuda", 0))
    for native in (True, False):
        cpu_bf16(native)
        assert textvae.device.fast_bf16(torch.device("cpu")) is native
    monkeypatch.undo()
    flags = textvae.device._cpu_flags()
    if flags:  # Linux: AVX-512 or bf16 instructions are what oneDNN needs for fast bf16
        assert textvae.device._cpu_bf16() == bool(flags & {"avx512f", "avx512_bf16", "amx_bf16", "bf16"})


# ------------------------------------------------------------------------------------ the API
def test_bf16_falls_back_to_float32_with_one_warning_where_the_cpu_emulates_it(gru_run, cpu_bf16):
    cpu_bf16(False)
    lines = "\n".join(SENTENCES) + "\n"
    result = run_main(["reconstruct", "--precision", "bf16", "--device", "cpu", "--model", str(gru_run)], cwd=gru_run,
                      input=lines)
    exact = run_main(["reconstruct", "--device", "cpu", "--model", str(gru_run)], cwd=gru_run, input=lines)
    assert result.returncode == exact.returncode == 0, result.stderr
    assert result.stdout == exact.stdout  # float32, byte for byte
    assert result.stderr.splitlines() == ["textvae: warning: --precision bf16: bfloat16 is emulated on this CPU (its "
                                          "matrix products run many times slower than float32); running in float32"]
    assert TextVAE.from_pretrained(gru_run, device="cpu", precision="bf16").precision == "32"


def test_from_pretrained_resolves_the_device(gru_run, no_accelerators):
    assert TextVAE.from_pretrained(gru_run).device == torch.device("cpu")  # auto
    with pytest.raises(UserError, match="CUDA is not available"):
        TextVAE.from_pretrained(gru_run, device="cuda")


@needs_cuda
def test_every_operation_stays_on_the_gpu(gru_run):
    from textvae.evaluate import evaluate

    vae = TextVAE.from_pretrained(gru_run, device="cuda", precision="bf16")
    assert vae.device.type == "cuda"
    codes = vae.encode(SENTENCES, sample=True, seed=0)
    assert codes.device.type == "cuda"
    assert len(vae.decode(codes, strategy="beam")) == 2
    assert len(vae.reconstruct(SENTENCES)) == 2 and len(vae.interpolate(*SENTENCES, steps=3)) == 5
    assert len(vae.sample(4, seed=0)) == 4
    nll, tokens = vae.score(SENTENCES, iw_samples=3)
    assert nll.device.type == "cuda" and torch.isfinite(nll).all()
    metrics, scores = evaluate(vae, vae.tokenize(SENTENCES * 5), iw_samples=3)
    assert scores.mean.device.type == "cuda" and np.isfinite(metrics["mi"])
    text = "the cat saw the ball\nnot in the vocabulary: ünïcode\n"
    cuda = TextVAE.from_pretrained(gru_run, device="cuda")
    assert cuda.decompress(cuda.compress(text)) == text


# ---------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory, gru_run) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("device_cli")
    sentences = root / "sentences.txt"
    sentences.write_text("\n".join(SENTENCES) + "\n")
    codes = root / "codes.npy"
    np.save(codes, TextVAE.from_pretrained(gru_run, device="cpu").encode(SENTENCES).cpu().numpy())
    compressed = root / "text.tvbb"
    compressed.write_bytes(TextVAE.from_pretrained(gru_run, device="cpu").compress("".join(SENTENCES)))
    return {"sentences": sentences, "codes": codes, "compressed": compressed, "root": root}


def commands(run: Path, inputs: dict[str, Path], out: Path) -> dict[str, list[str]]:
    model = ["--model", str(run)]
    return {
        "generate": ["generate", "--n", "3", "--seed", "0", *model],
        "interpolate": ["interpolate", *SENTENCES, "--steps", "2", *model],
        "reconstruct": ["reconstruct", str(inputs["sentences"]), *model],
        "encode": ["encode", str(inputs["sentences"]), "--out", str(out / "codes.npy"), *model],
        "decode": ["decode", str(inputs["codes"]), *model],
        "score": ["score", str(inputs["sentences"]), "--iw-samples", "2", *model],
        "evaluate": ["evaluate", "--iw-samples", "2", "--json", *model],
        "compress": ["compress", str(inputs["sentences"]), "-o", str(out / "out.tvbb"), *model],
        "decompress": ["decompress", str(inputs["compressed"]), "-o", str(out / "out.txt"), *model],
    }


COMMANDS = ["generate", "interpolate", "reconstruct", "encode", "decode", "score", "evaluate", "compress",
            "decompress"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_inference_command_runs_on_an_explicit_cpu(command, gru_run, cli_inputs, tmp_path, capsys,
                                                         monkeypatch):
    seen = []
    real = textvae.api.TextVAE.from_pretrained.__func__

    def spy(cls, path="runs/latest", device="auto", precision="32"):
        seen.append(device)
        return real(cls, path, device=device, precision=precision)

    monkeypatch.setattr(textvae.api.TextVAE, "from_pretrained", classmethod(spy))
    assert cli.main([*commands(gru_run, cli_inputs, tmp_path)[command], "--device", "cpu"]) == 0, \
        capsys.readouterr().err
    assert seen == [torch.device("cpu")]
    output = capsys.readouterr().out
    if command == "evaluate":
        assert json.loads(output)["device"] == "cpu"
    elif command in ("encode", "compress", "decompress"):
        assert any(tmp_path.iterdir())
    else:
        assert output.strip()


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("device", ["tpu", "cuda", "cuda:7", "mps"])
def test_a_bad_device_is_one_line_exit_2_and_changes_nothing(command, device, gru_run, cli_inputs, tmp_path,
                                                            capsys, monkeypatch, no_accelerators):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded despite a bad --device")

    monkeypatch.setattr(textvae.api.TextVAE, "from_pretrained", refuse)
    for name in ("codes.npy", "out.tvbb", "out.txt"):
        (tmp_path / name).write_text("untouched")
    assert cli.main([*commands(gru_run, cli_inputs, tmp_path)[command], "--device", device]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("textvae: error: --device")
    assert all((tmp_path / name).read_text() == "untouched" for name in ("codes.npy", "out.tvbb", "out.txt"))


def test_the_device_is_checked_before_the_input(capsys, no_accelerators):
    assert cli.main(["score", "no/such/file.txt", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_real_cli_device_flag(gru_run, cli_inputs):
    good = run_main(["generate", "--n", "2", "--seed", "0", "--device", "cpu", "--model", str(gru_run)],
                   cwd=cli_inputs["root"])
    assert good.returncode == 0 and len(good.stdout.splitlines()) == 2, good.stderr[-2000:]
    bad = run_main(["evaluate", "--device", "tpu", "--model", str(gru_run)], cwd=cli_inputs["root"])
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == ["textvae: error: --device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"]


# -------------------------------------------------------------------------------- training
def test_finish_run_evaluates_on_the_trainers_device(tmp_path, tiny_corpus, monkeypatch, cpu_bf16, caplog):
    """The end-of-run evaluation and export get the trainer's root device (the GPU of a GPU run),
    not a CPU of their own; here the trainer's device is the CPU, so the run still finishes.
    The CPU is made one without bf16 instructions: bf16-mixed becomes 32-true, with one warning."""
    import lightning as L

    import textvae.training
    from textvae.config import load_config

    monkeypatch.chdir(tmp_path)
    trainers, resolved, evaluated_on = [], [], []
    real_trainer, real_resolve, real_evaluate = L.Trainer, textvae.training.resolve_device, textvae.training.evaluate

    def trainer_spy(*args, **kwargs):
        trainers.append(real_trainer(*args, **kwargs))
        return trainers[-1]

    def resolve_spy(device):
        resolved.append(device)
        return real_resolve(device)

    def evaluate_spy(vae, *args, **kwargs):
        evaluated_on.append(next(vae.model.parameters()).device)
        return real_evaluate(vae, *args, **kwargs)

    monkeypatch.setattr(textvae.training.L, "Trainer", trainer_spy)
    monkeypatch.setattr(textvae.training, "resolve_device", resolve_spy)
    monkeypatch.setattr(textvae.training, "evaluate", evaluate_spy)
    config = load_config(str(CONFIGS / "debug.yaml"), [
        *text_overrides(tiny_corpus), "--output_dir", str(tmp_path / "run"), "--trainer.max_steps", "4",
        "--trainer.max_epochs", "1", "--trainer.precision", "bf16-mixed", "--eval.iw_samples", "1",
        "--eval.prior_samples", "10",
        "--eval.bleu_sentences", "10", "--eval.interp_pairs", "2", "--eval.num_samples_txt", "2"])
    cpu_bf16(False)
    with caplog.at_level(logging.WARNING, logger="textvae"):
        run_dir = textvae.training.train(config)
    assert [str(trainer.precision) for trainer in trainers] == ["32-true"]
    assert "trainer.precision bf16-mixed: bfloat16 is emulated on this CPU" in caplog.text
    assert json.loads((run_dir / "run.json").read_text())["precision"] == "32-true"
    root_device = trainers[-1].strategy.root_device
    assert resolved and all(device is root_device for device in resolved)  # before fit, then in finish_run
    assert len(resolved) == 2
    assert evaluated_on == [torch.device("cpu")] * 2  # valid and test
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert np.isfinite(metrics["test"]["nll"])
    exported = TextVAE.from_pretrained(run_dir, device="cpu")
    assert exported.extra["score_quantiles"]["split"] == "valid"


# ------------------------------------------------------------------------------ benchmarks
@pytest.mark.parametrize("script", ["bench_eval.py", "bench_generate.py", "bench_compress.py", "bench_bits.py",
                                    "bench_train.py"])
def test_benchmarks_refuse_a_bad_device_before_any_work(script, gru_run):
    source = ["--config", str(CONFIGS / "debug.yaml")] if script == "bench_train.py" else ["--model", str(gru_run)]
    result = subprocess.run([sys.executable, str(REPO / "scripts" / script), *source, "--device", "tpu"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines()[-1].endswith("argument --device: --device must be auto, cpu, cuda, cuda:N or mps, "
                                                   "got 'tpu'")
