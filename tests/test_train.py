"""End-to-end `textvae train` on configs/debug.yaml: run directory, export, resume, overwrite, --print_config."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import textvae
from conftest import CONFIGS, PTB_DIR, REPO, run_main
from textvae.api import TextVAE
from textvae.config import load_config
from textvae.loggers import AppendingCSVLogger
from textvae.losses import kl_weight
from textvae.api import evaluate_model
from textvae.tokenizer import length_batches
from textvae.training import load_checkpoint_model, source_commit

DEBUG = str(CONFIGS / "debug.yaml")
METRIC_KEYS = {"rec", "kl", "elbo", "nll", "ppl", "mi", "au", "rec_bleu", "rec_exact", "interp_distinct",
               "interp_step", "distinct_1", "distinct_2", "novel", "distinct_1_greedy", "distinct_2_greedy"}
# Cheaper end-of-training evaluation for the runs that only test step bookkeeping.
QUICK_EVAL = ["--eval.iw_samples", "1", "--eval.prior_samples", "10", "--eval.bleu_sentences", "10",
              "--eval.interp_pairs", "5"]


def train(workdir: Path, *extra: str, expect: int = 0):
    result = run_main(["train", "--config", DEBUG, "--data.root", str(PTB_DIR), *extra], cwd=workdir)
    assert result.returncode == expect, result.stderr[-3000:]
    return result


def read_log(run_dir: Path) -> list[dict]:
    with open(run_dir / "logs" / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def train_rows(run_dir: Path) -> list[dict]:
    return [row for row in read_log(run_dir) if row.get("train/beta")]


def checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under `directory`, following no links."""
    return {str(p.relative_to(directory)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(directory.rglob("*"))}


def ptb_lines(split: str, count: int) -> list[str]:
    return (PTB_DIR / f"ptb.{split}.txt").read_text().splitlines()[:count]


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory) -> Path:
    """A complete run of configs/debug.yaml on PTB (its first 400 sentences per split)."""
    workdir = tmp_path_factory.mktemp("debug_train")
    train(workdir)
    return workdir / "runs" / "debug"


def test_run_directory_is_complete(debug_run):
    for name in ("config.yaml", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "logs/metrics.csv",
                 "model/config.json", "model/model.safetensors", "model/tokenizer.json",
                 "model/tokenizer_config.json", "metrics.json", "samples.txt", "curves.png"):
        assert (debug_run / name).is_file(), name
    config = yaml.safe_load((debug_run / "config.yaml").read_text())
    assert config["data"]["root"] == str(PTB_DIR) and config["model"]["latent_dim"] == 8
    assert config["output_dir"] == "runs/debug"
    assert sorted(p.name for p in (debug_run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    best, last = (torch.load(debug_run / "checkpoints" / name, map_location="cpu", weights_only=True)
                  for name in ("best.ckpt", "last.ckpt"))
    assert "optimizer_states" not in best and last["optimizer_states"]  # only last.ckpt is for --resume
    assert (debug_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    samples = (debug_run / "samples.txt").read_text().splitlines()
    assert len(samples) == config["eval"]["num_samples_txt"] and all(line.strip() for line in samples)
    latest = debug_run.parent / "latest"
    assert latest.is_symlink() and latest.resolve() == debug_run.resolve()
    assert not [p.name for p in debug_run.parent.iterdir() if p.name.startswith(".")]  # no leftover temp files
    assert not [p.name for p in debug_run.iterdir() if p.name.startswith(".")]


def test_metrics_json(debug_run):
    metrics = json.loads((debug_run / "metrics.json").read_text())
    assert metrics["iw_samples"] == 5
    for split in ("valid", "test"):
        values = metrics[split]
        assert METRIC_KEYS <= values.keys()
        assert values["sentences"] == 400
        assert values["tokens"] == sum(len(line.split()) + 1 for line in ptb_lines(split, 400))
    # The end-of-run figures are what `textvae evaluate` computes for the exported model (same K and
    # seed), so the numbers in metrics.json can be reproduced from the model directory alone.
    again = evaluate_model(str(debug_run), "valid", iw_samples=5)
    for key in METRIC_KEYS:
        assert again[key] == pytest.approx(metrics["valid"][key], rel=1e-4, abs=1e-6), key


def test_training_log_has_train_and_valid_curves(debug_run):
    rows = read_log(debug_run)
    train_steps = [int(row["step"]) for row in rows if row.get("train/elbo")]
    assert train_steps == sorted(set(train_steps)) and len(train_steps) >= 4
    assert sum(1 for row in rows if row.get("valid/elbo")) == 2  # one validation per epoch, 2 epochs
    assert checkpoint_step(debug_run / "checkpoints" / "last.ckpt") == 26  # ceil(400 / 32) * 2


def test_export_matches_best_checkpoint(debug_run):
    exported = TextVAE.from_pretrained(debug_run.parent / "latest")
    assert exported.extra["checkpoint"] == "best.ckpt"
    restored = load_checkpoint_model(debug_run / "checkpoints" / "best.ckpt", exported.tokenizer)
    sentences = ptb_lines("test", 16)

    batch = next(length_batches(exported.tokenize(sentences), 64))[1]
    z = torch.randn(batch.size(0), exported.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        nll_exported = exported.model.reconstruction_nll(batch, z)
        nll_restored = restored.model.eval().reconstruction_nll(batch, z)
    torch.testing.assert_close(nll_exported, nll_restored)

    score_exported, tokens = exported.score(sentences, iw_samples=5, seed=3)
    score_restored, _ = restored.score(sentences, iw_samples=5, seed=3)
    torch.testing.assert_close(score_exported, score_restored)
    assert tokens.tolist() == [len(s.split()) + 1 for s in sentences]


def test_exported_tokenizer_loads_with_autotokenizer(debug_run):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(debug_run / "model"))
    vae = TextVAE.from_pretrained(debug_run / "model")
    assert (hf.pad_token, hf.unk_token, hf.bos_token, hf.eos_token) == ("<pad>", "<unk>", "<bos>", "<eos>")
    assert hf.pad_token_id == 0 and hf.eos_token_id == 3
    sentence = ptb_lines("valid", 1)[0]
    assert hf(sentence, add_special_tokens=False)["input_ids"] == vae.tokenize([sentence])[0][1:-1]
    assert len(hf) == vae.model.vocab_size


def test_print_config_is_the_merged_config(debug_run, tmp_path):
    overrides = ["--data.root", str(PTB_DIR), "--model.latent_dim", "16", "--kl.schedule=cyclical"]
    result = run_main(["train", "--config", DEBUG, *overrides, "--print_config"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    expected = load_config(DEBUG, overrides).to_dict()
    assert printed == expected
    assert printed["model"]["latent_dim"] == 16 and printed["kl"]["schedule"] == "cyclical"
    assert printed["data"]["limit"] == 400  # from the YAML file
    assert printed["model"]["encoder"]["dropout"] == load_config().model.encoder.dropout  # a dataclass default
    assert not (tmp_path / "runs").exists()  # printing trains nothing
    # The saved config of a real run is the merged config of its command line.
    saved = yaml.safe_load((debug_run / "config.yaml").read_text())
    assert saved == load_config(DEBUG, ["--data.root", str(PTB_DIR)]).to_dict()


def test_second_run_into_same_dir_is_refused(debug_run):
    workdir = debug_run.parent.parent
    before = snapshot(workdir)
    result = train(workdir, expect=2)
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and message.startswith("textvae: error:"), message
    assert "runs/debug" in message and "--resume" in message and "--overwrite" in message
    assert "Traceback" not in result.stderr
    assert snapshot(workdir) == before


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A debug run stopped at step 10, then resumed to step 20; also the first run's log rows."""
    workdir = tmp_path_factory.mktemp("resume")
    # Steps, not epochs, bound these runs: Lightning counts the epoch that max_steps cut short as a
    # whole one, so under debug.yaml's max_epochs: 2 the resumed run would stop at step 13.
    steps_only = ["--trainer.max_epochs", "-1", *QUICK_EVAL]
    train(workdir, "--trainer.max_steps", "10", *steps_only)
    run_dir = workdir / "runs" / "debug"
    first = train_rows(run_dir)
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == 10
    train(workdir, "--resume", "--trainer.max_steps", "20", *steps_only)
    return run_dir, first


def test_resume_continues_step_counter(resumed_run):
    run_dir, first = resumed_run
    first_steps = [int(row["step"]) for row in first]
    assert first_steps and max(first_steps) < 10
    steps = [int(row["step"]) for row in train_rows(run_dir)]
    assert steps == sorted(steps) and len(steps) == len(set(steps)), steps  # no restart at 0, no duplicates
    assert steps[: len(first_steps)] == first_steps  # the first run's rows are kept
    resumed = steps[len(first_steps):]
    assert resumed and min(resumed) >= 10 and max(resumed) < 20, steps
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == 20
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["max_steps"] == 20


def test_resume_continues_kl_schedule(resumed_run):
    run_dir, _ = resumed_run
    config = load_config(run_dir / "config.yaml")
    assert config.kl.schedule == "linear" and config.kl.warmup_steps == 20
    rows = train_rows(run_dir)
    assert any(int(row["step"]) > 10 for row in rows)
    for row in rows:
        assert float(row["train/beta"]) == pytest.approx(kl_weight(int(row["step"]), config.kl), abs=1e-6), row


def test_overwrite_starts_again(resumed_run, tmp_path):
    workdir = tmp_path / "work"
    run_dir = workdir / "runs" / "debug"
    shutil.copytree(resumed_run[0], run_dir)
    assert max(int(row["step"]) for row in train_rows(run_dir)) >= 10
    train(workdir, "--overwrite", "--trainer.max_steps", "6", "--data.limit", "100", *QUICK_EVAL)
    steps = [int(row["step"]) for row in train_rows(run_dir)]
    assert steps and max(steps) < 6  # the old log is gone, not appended to
    # last.ckpt holds the final step (a second "last" callback must not write last-v1.ckpt beside it)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == 6
    exported = json.loads((run_dir / "model" / "config.json").read_text())
    assert exported["config"]["trainer"]["max_steps"] == 6  # the export was replaced too
    assert (workdir / "runs" / "latest").resolve() == run_dir.resolve()


def test_a_copied_run_resumes_and_exports_from_its_own_checkpoints(tmp_path):
    original, copy = tmp_path / "a", tmp_path / "b"
    original.mkdir()
    quick = ["--trainer.max_epochs", "-1", "--data.limit", "100", *QUICK_EVAL]
    train(original, "--trainer.max_steps", "6", *quick)
    shutil.copytree(original / "runs" / "debug", copy / "runs" / "debug")
    shutil.rmtree(original)  # the checkpoints still name it as where the best one was
    # no validation after the resume, so no new best checkpoint replaces the copied one
    train(copy, "--resume", "--trainer.max_steps", "8", "--trainer.limit_val_batches", "0", *quick)
    run_dir = copy / "runs" / "debug"
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == 8
    exported = load_file(run_dir / "model" / "model.safetensors")
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor, best[f"model.{name}"])


def test_run_json_records_version_and_git_commit(debug_run):
    info = json.loads((debug_run / "run.json").read_text())
    assert info["version"] == textvae.__version__
    assert info["torch"] == torch.__version__ and info["python"] and info["lightning"]
    assert info["precision"] == "32-true"  # debug.yaml's default
    if not (REPO / ".git").exists():
        assert info["git_commit"] is None and info["git_dirty"] is None
        return
    assert re.fullmatch(r"[0-9a-f]{40}", info["git_commit"]), info
    # The commit checked out when the run started (HEAD may have moved on since).
    ancestor = subprocess.run(["git", "-C", str(REPO), "merge-base", "--is-ancestor", info["git_commit"], "HEAD"])
    assert ancestor.returncode == 0
    assert isinstance(info["git_dirty"], bool)


def test_git_commit_is_null_outside_a_git_checkout(tmp_path):
    assert source_commit(tmp_path) is None
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert source_commit(tmp_path) == head
    (tmp_path / "site-packages").mkdir()  # a package installed somewhere inside another project's checkout
    assert source_commit(tmp_path / "site-packages") is None


def test_csv_log_appends_to_an_existing_file_and_widens_its_header(tmp_path):
    path = tmp_path / "logs" / "metrics.csv"
    path.parent.mkdir()
    path.write_text("step,train/elbo\n0,5.0\n")
    logger = AppendingCSVLogger(path)
    logger.log_metrics({"train/elbo": 4.0}, step=1)
    logger.save()
    assert path.read_text() == "step,train/elbo\n0,5.0\n1,4.0\n"
    logger.log_metrics({"valid/elbo": torch.tensor(3.5)}, step=2)
    logger.finalize("success")
    with open(path, newline="") as handle:
        assert list(csv.DictReader(handle)) == [{"step": "0", "train/elbo": "5.0", "valid/elbo": ""},
                                                {"step": "1", "train/elbo": "4.0", "valid/elbo": ""},
                                                {"step": "2", "train/elbo": "", "valid/elbo": "3.5"}]
    assert [p.name for p in path.parent.iterdir()] == ["metrics.csv"]  # no temporary file left


@pytest.fixture(scope="module")
def configured_run(tmp_path_factory) -> Path:
    """debug.yaml with the trainer options users ask for: TensorBoard beside the CSV log, two
    batches per optimizer step, validation every second epoch, deterministic kernels."""
    workdir = tmp_path_factory.mktemp("configured")
    train(workdir, "--trainer.logger", "[csv,tensorboard]", "--trainer.accumulate_grad_batches", "2",
          "--trainer.check_val_every_n_epoch", "2", "--trainer.deterministic", "true", *QUICK_EVAL)
    return workdir / "runs" / "debug"


def test_tensorboard_logger_writes_the_training_curves(configured_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(configured_run / "logs" / "tensorboard"))
    events.Reload()
    assert {"train/elbo", "train/beta", "valid/elbo"} <= set(events.Tags()["scalars"])
    assert read_log(configured_run) and (configured_run / "curves.png").is_file()  # the CSV log is always kept


def test_accumulate_grad_batches_and_check_val_every_n_epoch(configured_run):
    # 13 batches an epoch, an optimizer step every 2 (the epoch's last batch steps alone): 7 steps an epoch
    assert checkpoint_step(configured_run / "checkpoints" / "last.ckpt") == 14
    assert [int(row["epoch"]) for row in read_log(configured_run) if row.get("valid/elbo")] == [1]
    assert yaml.safe_load((configured_run / "config.yaml").read_text())["trainer"]["logger"] == ["csv", "tensorboard"]


def test_best_by_rec_exports_the_lowest_valid_rec(tmp_path):
    # A plain autoencoder (beta 0 throughout, with the bag-of-words loss) validated on its own training
    # sentences: its KL swings and grows while its reconstructions improve, so the lowest valid elbo is
    # not the lowest rec.
    sentences = tmp_path / "s.txt"
    sentences.write_text("\n".join(ptb_lines("train", 200)) + "\n")
    files = [f"--data.{split}_file={sentences}" for split in ("train", "valid", "test")]
    train(tmp_path, "--trainer.best_by", "rec", "--data.dataset", "text", *files, "--kl.ae_steps", "1000",
          "--kl.ae_reset_decoder", "false", "--kl.free_bits", "0", "--model.word_dropout", "0",
          "--model.latent_dim", "32", "--model.bow_weight", "0.5", "--optim.lr", "0.01",
          "--trainer.max_epochs", "12", *QUICK_EVAL)
    run_dir = tmp_path / "runs" / "debug"
    rows = [row for row in read_log(run_dir) if row.get("valid/elbo")]
    lowest_rec, lowest_elbo = (min(rows, key=lambda row: float(row[key])) for key in ("valid/rec", "valid/elbo"))
    assert checkpoint_step(run_dir / "checkpoints" / "best.ckpt") == int(lowest_rec["step"]) + 1
    assert lowest_elbo["step"] != lowest_rec["step"], rows  # the default would have exported another one
    exported = TextVAE.from_pretrained(run_dir)  # the bag-of-words head travels with the export
    assert exported.extra["checkpoint"] == "best.ckpt" and exported.model.bow is not None
    assert all(row.get("valid/bow") for row in rows)


def test_early_stopping_after_patience_validations_without_improvement(tmp_path):
    # A learning rate of 1e-30 leaves the weights as they are: valid/elbo moves only with the sampled
    # codes, so a new minimum soon stops coming.
    result = train(tmp_path, "--trainer.early_stopping_patience", "2", "--trainer.max_epochs", "30",
                   "--optim.lr", "1e-30", "--data.limit", "64", *QUICK_EVAL)
    elbos = [float(row["valid/elbo"]) for row in read_log(tmp_path / "runs" / "debug") if row.get("valid/elbo")]
    best, waited = float("inf"), 0
    for validations, value in enumerate(elbos, 1):
        best, waited = (value, 0) if value < best else (best, waited + 1)
        if waited == 2:
            break
    assert validations == len(elbos) < 30, elbos
    assert "stopped early" in result.stderr


def test_a_run_stopped_during_its_evaluation_leaves_a_loadable_model(tmp_path, monkeypatch):
    """model/ (and runs/latest) are written before the end-of-run evaluation starts."""
    import textvae.evaluate
    import textvae.training as training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(textvae.evaluate, "score_ids", interrupted)
    config = load_config(DEBUG, ["--data.root", str(PTB_DIR), "--data.limit", "60", "--trainer.max_steps", "2",
                                 "--trainer.max_epochs", "-1", "--output_dir", "runs/stopped"])
    with pytest.raises(KeyboardInterrupt):
        training.train(config)
    run_dir = tmp_path / "runs" / "stopped"
    assert not (run_dir / "metrics.json").exists()
    vae = TextVAE.from_pretrained("runs/latest")
    assert "score_quantiles" not in vae.extra and len(vae.sample(2, seed=0)) == 2
    restored = load_checkpoint_model(run_dir / "checkpoints" / vae.extra["checkpoint"], vae.tokenizer)
    assert vae.reconstruct(["the company said"]) == restored.reconstruct(["the company said"])


def test_a_capped_evaluation_evaluates_exactly_the_first_n_sentences(debug_run, capsys, monkeypatch):
    from textvae.cli import main
    from textvae.data import load_corpus
    from textvae.evaluate import score_ids

    monkeypatch.chdir(debug_run.parent.parent)
    assert main(["evaluate", "--model", str(debug_run / "model"), "--split", "valid", "--iw-samples", "3",
                 "--max-sentences", "7", "--prior-samples", "0", "--interp-pairs", "2", "--rec-beam", "2",
                 "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    vae = TextVAE.from_pretrained(debug_run / "model")
    full = vae.config.data.__class__(**{**vae.config.data.__dict__, "max_length": 10**9})
    ids = load_corpus(full, vae.tokenizer, splits=("valid",))[0]["valid"].ids[:7]
    direct = score_ids(vae, ids, 3)
    assert metrics["sentences"] == 7 and metrics["tokens"] == sum(len(x) - 1 for x in ids)
    assert metrics["nll"] == pytest.approx(direct.nll.mean().item(), rel=1e-5)
    assert "novel" not in metrics and "interp_distinct" in metrics  # --prior-samples 0 skips the prior metrics
    assert 0 <= metrics["rec_bleu_beam"] <= 100 and 0 <= metrics["rec_exact_beam"] <= 1
    for flag, value in (("--max-sentences", "0"), ("--bleu-sentences", "-1"), ("--rec-beam", "-1")):
        assert main(["evaluate", "--model", str(debug_run / "model"), flag, value]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert flag in line and value in line


def test_a_long_evaluation_announces_its_estimated_time(debug_run, capsys, monkeypatch):
    import textvae.evaluate
    from textvae.cli import main

    monkeypatch.setattr(textvae.evaluate, "ANNOUNCE_SECONDS", -1)  # every evaluation counts as long
    assert main(["evaluate", "--model", str(debug_run / "model"), "--iw-samples", "2", "--max-sentences", "20",
                 "--prior-samples", "0", "--json"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "estimated" in line or "about" in line]
    assert len(lines) == 1 and "20 sentences at K = 2" in lines[0] and "--max-sentences" in lines[0]
    assert re.search(r"about \d+ (s|min)", lines[0])


def test_textvae_train_stays_the_function_after_every_submodule_is_imported(tmp_path, monkeypatch):
    """`textvae.train` is the public function even once the training module is imported (it is
    textvae/training.py, not textvae/train.py, whose import would replace the function)."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(textvae.__path__):
        importlib.import_module(f"textvae.{module.name}")
    monkeypatch.chdir(tmp_path)
    for name in ("first", "second"):
        config = load_config(DEBUG, ["--data.root", str(PTB_DIR), "--data.limit", "40", "--trainer.max_steps", "2",
                                     "--trainer.max_epochs", "-1", "--output_dir", f"runs/{name}", *QUICK_EVAL])
        assert callable(textvae.train) and textvae.train(config) == Path("runs") / name
        assert (tmp_path / "runs" / name / "model" / "model.safetensors").is_file()
