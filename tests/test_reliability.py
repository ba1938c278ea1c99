"""Bad input through the real CLI: bad input gets one line and exit 2, and crashes lose nothing."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, PTB_DIR, run_cli, run_main, text_overrides

from textvae import TextVAE

DEBUG_YAML = str(CONFIGS / "debug.yaml")
SMALL_EVAL = ["--eval.prior_samples", "10", "--eval.bleu_sentences", "10", "--eval.interp_pairs", "5",
              "--eval.num_samples_txt", "2"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread_per_process():
    """The CLI processes here run side by side on shared cores, where extra intra-op threads only
    add synchronisation cost to the tiny debug model."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under `root`: files by (mtime, sha256), symlinks by target, directories by name."""
    state = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            state[key] = ("symlink", os.readlink(path))
        elif path.is_file():
            state[key] = (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
        else:
            state[key] = ("dir",)
    return state


def train_args(corpus: dict[str, Path], *extra: str, output_dir: str = "runs/model", overwrite: bool = True):
    """`textvae train` on debug.yaml and the synthetic corpus, into the existing run `output_dir`."""
    flags = ["--overwrite"] if overwrite else []
    return ["train", "--config", DEBUG_YAML, *text_overrides(corpus), "--output_dir", output_dir, *flags, *extra]


def ptb_args(root: Path, *extra: str) -> list[str]:
    return ["train", "--config", DEBUG_YAML, "--output_dir", "runs/model", "--overwrite", "--data.root", str(root),
            *extra]


# Each case prepares its working directory (which already holds a copy of a trained run at
# runs/model) and returns the command line and the strings the error line must contain.
CASES = {}


def case(function):
    CASES[function.__name__] = function
    return function


@case
def config_missing_file(work, corpus):
    return ["train", "--config", str(work / "nope.yaml")], ["nope.yaml", "not found"]


@case
def config_yaml_syntax_error(work, corpus):
    (work / "bad.yaml").write_text("seed: 0\nmodel:\n  latent_dim: 8\n   word_dropout: 0.1\n")
    return ["train", "--config", str(work / "bad.yaml")], ["bad.yaml", "line 4"]


@case
def config_unknown_key(work, corpus):
    return train_args(corpus, "--model.latnt_dim", "8"), ["model.latnt_dim", "did you mean model.latent_dim"]


@case
def config_wrong_type(work, corpus):
    return train_args(corpus, "--model.latent_dim", "eight"), ["model.latent_dim", "'eight'"]


@case
def config_latent_dim_zero(work, corpus):
    return train_args(corpus, "--model.latent_dim", "0"), ["model.latent_dim", "got 0"]


@case
def config_word_dropout_above_one(work, corpus):
    return train_args(corpus, "--model.word_dropout", "1.5"), ["model.word_dropout", "1.5"]


@case
def config_unknown_decoder_type(work, corpus):
    return train_args(corpus, "--model.decoder.type", "lstm"), ["model.decoder.type", "'lstm'"]


@case
def config_unknown_kl_schedule(work, corpus):
    return train_args(corpus, "--kl.schedule", "sigmoid"), ["kl.schedule", "'sigmoid'"]


@case
def config_batch_size_zero(work, corpus):
    return train_args(corpus, "--data.batch_size", "0"), ["data.batch_size", "got 0"]


@case
def config_max_length_one(work, corpus):
    return train_args(corpus, "--data.max_length", "1"), ["data.max_length", "got 1"]


@case
def config_bad_trainer_precision(work, corpus):  # Lightning's own check, reached after the data is read
    return train_args(corpus, "--trainer.precision", "99"), ["trainer", "Precision 99"]


@case
def config_bad_trainer_strategy(work, corpus):
    return train_args(corpus, "--trainer.strategy", "bogus"), ["trainer", "bogus"]


@case
def config_unknown_logger(work, corpus):
    return train_args(corpus, "--trainer.logger", "[csv,comet]"), ["trainer.logger", "comet", "tensorboard"]


@case
def data_missing_text_file(work, corpus):
    return train_args(corpus, "--data.valid_file", str(work / "missing.txt")), ["missing.txt", "not found"]


@case
def data_empty_file(work, corpus):
    (work / "empty.txt").write_text("")
    return train_args(corpus, "--data.train_file", str(work / "empty.txt")), ["empty.txt", "empty"]


@case
def data_ptb_checksum_mismatch(work, corpus):
    root = work / "ptb"
    root.mkdir()
    for split in ("train", "valid", "test"):
        shutil.copy(PTB_DIR / f"ptb.{split}.txt", root)
    with open(root / "ptb.valid.txt", "a") as handle:
        handle.write(" an extra line\n")
    return ptb_args(root), ["ptb.valid.txt", "MD5"]


@case
def data_ptb_absent_offline(work, corpus):
    root = work / "no_ptb"
    root.mkdir()
    return (ptb_args(root, "--data.download_url", "http://127.0.0.1:1/none.tgz"),
            [str(root), "127.0.0.1:1", "ptb.train.txt"])


@case
def data_not_utf8(work, corpus):
    (work / "latin1.txt").write_bytes(b"the cat saw the ball\na dog found a tree\nthe caf\xe9 was shut\n")
    return train_args(corpus, "--data.train_file", str(work / "latin1.txt")), ["latin1.txt", "line 3", "UTF-8"]


@case
def data_split_of_blank_lines(work, corpus):
    (work / "blank.txt").write_text("\n\n   \n\n")
    return train_args(corpus, "--data.test_file", str(work / "blank.txt")), ["blank.txt", "empty"]


@case
def data_split_empty_after_filtering(work, corpus):
    # Unicode spaces survive the byte-level emptiness check, so the line filter empties the split.
    (work / "spaces.txt").write_text("\u3000\n\u00a0\u2003\n")
    return train_args(corpus, "--data.valid_file", str(work / "spaces.txt")), ["spaces.txt", "empty"]


@case
def model_generate_without_trained_model(work, corpus):
    return ["generate", "--n", "2"], ["runs/latest", "textvae train"]


@case
def model_evaluate_without_trained_model(work, corpus):
    return ["evaluate", "--iw-samples", "2"], ["runs/latest", "textvae train"]


@case
def model_missing_directory(work, corpus):
    return ["generate", "--n", "2", "--model", "runs/gone"], ["runs/gone"]


@case
def model_truncated_weights(work, corpus):
    weights = work / "runs" / "model" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return ["generate", "--n", "2", "--model", "runs/model"], ["model.safetensors"]


@case
def model_config_missing_keys(work, corpus):
    path = work / "runs" / "model" / "model" / "config.json"
    meta = json.loads(path.read_text())
    del meta["vocab_size"]
    path.write_text(json.dumps(meta))
    return ["generate", "--n", "2", "--model", "runs/model"], ["config.json", "vocab_size"]


@case
def model_incompatible_format_version(work, corpus):
    path = work / "runs" / "model" / "model" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 999}))
    return ["evaluate", "--model", "runs/model"], ["format_version", "999"]


@case
def model_tokenizer_missing(work, corpus):
    (work / "runs" / "model" / "model" / "tokenizer.json").unlink()
    return ["generate", "--n", "2", "--model", "runs/model"], ["tokenizer.json"]


@case
def args_n_zero(work, corpus):
    return ["generate", "--n", "0", "--model", "runs/model"], ["--n", "got 0"]


@case
def args_n_negative(work, corpus):
    return ["generate", "--n", "-3", "--model", "runs/model"], ["--n", "got -3"]


@case
def args_steps_zero(work, corpus):
    return (["interpolate", "the cat saw the ball", "a dog liked the river", "--steps", "0", "--model", "runs/model"],
            ["--steps", "got 0"])


@case
def args_top_p_zero(work, corpus):
    return ["generate", "--n", "2", "--top-p", "0", "--model", "runs/model"], ["--top-p", "got 0"]


@case
def args_top_p_above_one(work, corpus):
    return ["generate", "--n", "2", "--top-p", "1.5", "--model", "runs/model"], ["--top-p", "got 1.5"]


@case
def args_unknown_precision(work, corpus):
    return ["generate", "--n", "2", "--precision", "fp16", "--model", "runs/model"], ["--precision", "'fp16'"]


@case
def args_interpolate_empty_sentence(work, corpus):
    return ["interpolate", "", "a dog liked the river", "--model", "runs/model"], ["interpolate", "empty"]


@case
def args_input_not_utf8(work, corpus):
    (work / "latin1.txt").write_bytes(b"the cat saw the ball\nthe caf\xe9 was shut\n")
    return ["score", "latin1.txt", "--model", "runs/model"], ["latin1.txt", "line 2", "UTF-8"]


@case
def train_unwritable_output_dir(work, corpus):
    (work / "somefile").write_text("a file, so nothing can be created under it\n")
    return train_args(corpus, output_dir="somefile/run", overwrite=False), ["somefile/run"]


@case
def train_existing_run_without_resume_or_overwrite(work, corpus):
    return train_args(corpus, overwrite=False), ["runs/model", "--resume", "--overwrite"]


class _Payload:
    """Unpickling this calls os.mkdir(path): the kind of code a hostile checkpoint can carry."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def add_payload(checkpoint: Path, marker: Path) -> None:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state.setdefault("callbacks", {})["payload"] = _Payload(marker)  # best.ckpt (weights only) has none
    torch.save(state, checkpoint)


@case
def train_resume_from_checkpoint_with_pickled_payload(work, corpus):
    # The snapshot comparison would see the directory the payload makes if it ran.
    add_payload(work / "runs" / "model" / "checkpoints" / "last.ckpt", work / "payload-ran")
    return (train_args(corpus, "--resume", overwrite=False),
            ["runs/model/checkpoints/last.ckpt", "pickled", "posix.mkdir"])


@case
def train_resume_from_truncated_checkpoint(work, corpus):
    last = work / "runs" / "model" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:4096])
    return train_args(corpus, "--resume", overwrite=False), ["runs/model/checkpoints/last.ckpt", "not a readable"]


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory, gru_run, tiny_corpus) -> dict:
    """Every case's CLI result (`textvae.cli.main` in this process: the exit status and the
    output are the CLI's own; test_a_bad_input_exits_2_from_a_real_process checks the process
    boundary once) and snapshots of its working directory before and after."""
    results = {}
    for name, setup in CASES.items():
        work = tmp_path_factory.mktemp(name)
        shutil.copytree(gru_run, work / "runs" / "model")
        args, culprits = setup(work, tiny_corpus)
        before = snapshot(work)
        results[name] = (run_main(args, cwd=work), culprits, before, snapshot(work))
    return results


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_one_line_and_exit_2_and_changes_nothing(name, bad_input_runs):
    result, culprits, before, after = bad_input_runs[name]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("textvae: error: "), result.stderr[-3000:]
    for culprit in culprits:
        assert culprit in lines[0]
    assert result.stdout == ""
    assert after == before, "a failed command changed files in its working directory"


def test_a_bad_input_exits_2_from_a_real_process(gru_run, tmp_path):
    result = run_cli(["generate", "--n", "0", "--model", str(gru_run)], cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == ["textvae: error: --n must be at least 1, got 0"]


@pytest.mark.parametrize("command", [["reconstruct"], ["score", "--iw-samples", "2"]])
def test_unknown_words_warn_and_succeed(command, gru_run, tmp_path):
    lines = ["the cat saw the zebra", "a dog liked the ball"]
    (tmp_path / "input.txt").write_text("\n".join(lines) + "\n")
    result = run_cli([*command, "input.txt", "--model", str(gru_run)], cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^textvae: warning: 1 unknown word.*<unk>", result.stderr, re.MULTILINE), result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stdout.splitlines()) == len(lines)


# ------------------------------------------------------------------------------- crash safety


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background parent may ignore SIGINT; Ctrl-C must work


def start_cli(args: list[str], cwd: Path, stderr) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "textvae.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=stderr, text=True, preexec_fn=_default_sigint)


def checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def wait_for_checkpoint(path: Path, process: subprocess.Popen, min_step: int, timeout: float = 180) -> list[int]:
    """Poll `path` until it holds a checkpoint at `min_step` or later; returns the steps seen."""
    seen, mtime = [], None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"training ended (status {process.returncode}) before {path} appeared"
        if path.is_file() and path.stat().st_mtime_ns != mtime:
            mtime = path.stat().st_mtime_ns
            try:
                seen.append(checkpoint_step(path))
            except (RuntimeError, EOFError, OSError, pickle.UnpicklingError):  # caught mid-write
                mtime = None
            if seen and seen[-1] >= min_step:
                return seen
        time.sleep(0.1)
    process.kill()
    pytest.fail(f"no checkpoint at step >= {min_step} in {path} after {timeout} s (saw {seen})")


def logged_train_steps(metrics_csv: Path) -> list[int]:
    with open(metrics_csv, newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle) if row.get("train/loss")]


def test_killed_training_resumes_from_last_checkpoint(tmp_path, tiny_corpus):
    every = 5
    args = ["train", "--config", DEBUG_YAML, *text_overrides(tiny_corpus), "--output_dir", "runs/crash",
            "--trainer.checkpoint_every_n_steps", str(every), "--trainer.max_epochs", "200",
            "--trainer.log_every_n_steps", "1", *SMALL_EVAL]
    last = tmp_path / "runs" / "crash" / "checkpoints" / "last.ckpt"
    process = start_cli(args, tmp_path, subprocess.DEVNULL)
    seen = wait_for_checkpoint(last, process, min_step=2 * every)
    process.kill()  # SIGKILL: no handler runs, nothing is flushed
    process.wait(timeout=30)
    resumed_from = checkpoint_step(last)
    assert resumed_from >= seen[-1] >= 2 * every
    epoch = math.ceil(len(tiny_corpus["train"].read_text().splitlines()) / 32)  # debug.yaml's batch_size
    # last.ckpt follows the step cadence (or an epoch end), so a kill loses fewer than `every` steps
    assert all(step % every == 0 or step % epoch == 0 for step in [*seen, resumed_from]), (seen, resumed_from)

    extra = 5
    result = run_cli([*args, "--resume", "--trainer.max_steps", str(resumed_from + extra)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpoint_step(last) == resumed_from + extra
    steps = logged_train_steps(tmp_path / "runs" / "crash" / "logs" / "metrics.csv")
    assert len(steps) == len(set(steps)) and steps == sorted(steps), steps
    assert [s for s in steps if s >= resumed_from] == list(range(resumed_from, resumed_from + extra))
    vae = TextVAE.from_pretrained(tmp_path / "runs" / "crash" / "model")
    samples = vae.sample(3, seed=0)
    assert len(samples) == 3 and all(isinstance(s, str) for s in samples)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_checkpoint_and_exits_128_plus_signal(tmp_path, tiny_corpus, signum, status):
    args = ["train", "--config", DEBUG_YAML, *text_overrides(tiny_corpus), "--output_dir", "runs/stop",
            "--trainer.checkpoint_every_n_steps", "3", "--trainer.max_epochs", "200"]
    last = tmp_path / "runs" / "stop" / "checkpoints" / "last.ckpt"
    process = start_cli(args, tmp_path, subprocess.PIPE)
    wait_for_checkpoint(last, process, min_step=1)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == status, stderr[-3000:]
    assert "Traceback" not in stderr
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("textvae: ") and "--resume" in message, stderr[-3000:]
    stopped_at = int(re.search(r"at step (\d+)", message).group(1))
    assert checkpoint_step(last) == stopped_at >= 1  # saved on the signal, not only by the periodic save
    assert not (tmp_path / "runs" / "stop" / "model").exists()


def test_pickled_payload_in_the_best_checkpoint_is_refused_at_the_end_of_a_run(tmp_path, tiny_corpus):
    args = train_args(tiny_corpus, "--trainer.max_epochs", "1", *SMALL_EVAL, overwrite=False)
    assert run_main(args, cwd=tmp_path).returncode == 0
    run_dir, marker = tmp_path / "runs" / "model", tmp_path / "payload-ran"
    add_payload(run_dir / "checkpoints" / "best.ckpt", marker)
    exported = {p.relative_to(run_dir): p.read_bytes() for p in (run_dir / "model").rglob("*") if p.is_file()}
    # Resumed at its last step, the run trains no further and exports best.ckpt, which it did not write.
    result = run_main([*args, "--resume"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("textvae: error: checkpoint: "), result.stderr[-3000:]
    assert "best.ckpt" in lines[0] and "pickled" in lines[0]
    assert not marker.exists()
    assert {p.relative_to(run_dir): p.read_bytes() for p in (run_dir / "model").rglob("*") if p.is_file()} == exported


def test_logger_whose_package_is_missing_is_one_line_before_anything_changes(tmp_path, tiny_corpus):
    missing = next((name for name in ("wandb", "mlflow") if importlib.util.find_spec(name) is None), None)
    if missing is None:
        pytest.skip("wandb and mlflow are both installed")
    result = run_main(train_args(tiny_corpus, "--trainer.logger", f"[csv,{missing}]", overwrite=False), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines() == [f"textvae: error: config: trainer.logger {missing} needs the {missing} "
                                          f"package: pip install {missing}"]
    assert list(tmp_path.iterdir()) == []  # not even the run directory was made


def test_nan_loss_stops_and_keeps_the_exported_model(tmp_path, gru_run, tiny_corpus):
    run_dir = tmp_path / "runs" / "model"
    shutil.copytree(gru_run, run_dir)
    exported = {p.relative_to(run_dir): p.read_bytes() for p in (run_dir / "model").rglob("*") if p.is_file()}
    result = run_main(train_args(tiny_corpus, "--optim.lr", "1e30"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("textvae: error: training: loss is "), result.stderr[-3000:]
    assert re.search(r"loss is (nan|inf|-inf) at step \d+", message), message
    assert {p.relative_to(run_dir): p.read_bytes() for p in (run_dir / "model").rglob("*") if p.is_file()} == exported
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []  # no half-written export


def test_ddp_on_two_cpu_processes_over_the_memory_mapped_cache(tmp_path, tiny_corpus):
    import datasets

    # The corpus as a `datasets` save_to_disk folder (data.dataset: hf), tokenised into a fresh cache.
    folder = tmp_path / "corpus"
    datasets.DatasetDict({name: datasets.Dataset.from_dict({"sentence": path.read_text().splitlines()})
                          for name, path in (("train", tiny_corpus["train"]), ("validation", tiny_corpus["valid"]),
                                             ("test", tiny_corpus["test"]))}).save_to_disk(str(folder))
    cache = tmp_path / "hf_cache"
    result = run_cli(["train", "--config", DEBUG_YAML, "--data.dataset", "hf", "--data.path", str(folder),
                      "--data.text_column", "sentence", "--data.limit", "null", "--output_dir", "runs/ddp",
                      "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                      "--trainer.strategy", "ddp", *SMALL_EVAL], cwd=tmp_path,
                     env_update={"HF_DATASETS_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr[-3000:]
    # Both ranks read one tokenizer and one tokenised file per split: the second rank built nothing.
    assert len(list((cache / "textvae" / "tokenizers").glob("*.json"))) == 1
    tokenised = [p for p in folder.rglob("cache-*.arrow")]
    assert len(tokenised) == 3, tokenised
    run_dir = tmp_path / "runs" / "ddp"
    sentences = len(tiny_corpus["train"].read_text().splitlines())
    batches = math.ceil(sentences / 32)  # debug.yaml's batch_size
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == math.ceil(batches / 2)  # each rank: half
    vae = TextVAE.from_pretrained(run_dir / "model")
    assert len(vae.sample(2, seed=0)) == 2
    assert json.loads((run_dir / "metrics.json").read_text())["test"]["sentences"] == 60
