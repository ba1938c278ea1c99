"""`train(config) -> run dir`: a Lightning run from a config, its run directory, export and end-of-run evaluation.

A run directory holds `config.yaml`, `run.json` (the textvae version and git commit that
started or last resumed the run, the commit null outside a git checkout, and the precision it
trains in), `checkpoints/`
(`best.ckpt`, weights only, by validation ELBO, or by validation rec with `trainer.best_by: rec`;
`last.ckpt` with the optimizer state for `--resume`, refreshed after every validation and every
`trainer.checkpoint_every_n_steps`),
`logs/metrics.csv` (and the logs of `trainer.logger`), the `model/` export of the best
checkpoint, `metrics.json` (the metrics of docs/metrics.md on valid and test), `samples.txt` and `curves.png`;
`runs/latest` points at the newest run. Choices worth knowing:

- The run directory is checked (writable; not an existing run unless `resume`/`overwrite`)
  before any data is read, but changed (old checkpoints/logs cleared, `config.yaml` written)
  only once data and trainer settings have passed, so bad input loses nothing. Only rank 0
  writes outside Lightning's own checkpointing.
- Under `strategy: ddp` Lightning re-launches this command once per extra device; those
  processes skip the run-directory checks (they see the directory rank 0 just made).
- SIGINT/SIGTERM save `last.ckpt` (Lightning's `OnExceptionCheckpoint`) and end with
  `Interrupted`; a diverged loss ends with `TrainingDiverged`. Neither touches an existing
  `model/` export, which is only ever replaced by a complete new one (written to a temporary
  directory, then renamed).
- Checkpoints are only ever read with `torch.load(weights_only=True)`, ours (`read_checkpoint`)
  and Lightning's on resume alike: a checkpoint holding pickled objects is refused (one line,
  exit 2) on `--resume` before the run directory changes, or at the end of a run before export.
- A resumed run appends to `logs/metrics.csv` (rows past the checkpoint's step are dropped;
  loggers.py), instead of Lightning's CSVLogger's default of deleting the file.
- `trainer.early_stopping_patience` adds Lightning's `EarlyStopping` on the same metric as the best
  checkpoint: `valid/elbo`, or `valid/rec` with `trainer.best_by: rec`. A model whose KL is meant to
  grow (an autoencoder phase, a high target rate) has its best ELBO early and its best
  reconstructions late, so ELBO would export an early checkpoint.
- The end-of-run evaluation (IW-NLL, decodes, MI) and `samples.txt` run on the trainer's root
  device (a GPU run stays on its GPU); the export is device-independent (CPU copies of the weights).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import platform
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from textvae.anomaly import dictionary_from_ids, validation_stats
from textvae.api import TextVAE
from textvae.config import Config, dump_config
from textvae.device import bf16_fallback, resolve_device
from textvae.errors import Interrupted, UserError
from textvae.files import atomic_path, atomic_write_text
from textvae.loggers import make_loggers, resolve_loggers, trim_log
from textvae.plots import plot_curves
from textvae.pretrained import load_parts, text_tokenizer
from textvae.tokenizer import decode_ids
from textvae.evaluate import PRIOR_STRATEGY, evaluate, training_sentences
from textvae.system import TextDataModule, VAESystem

log = logging.getLogger("textvae")


def is_launched_child() -> bool:
    """True in the extra processes Lightning's DDP launcher starts (and on nodes other than 0)."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """Check the run directory before any work; returns the checkpoint to resume from."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume:
        if not last.is_file():
            raise UserError(f"train: --resume needs {last}, which does not exist")
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise UserError(f"train: {run_dir} already holds a run; pass --resume to continue it or --overwrite "
                            f"to start again (or set --output_dir)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise UserError(f"train: cannot write to output directory {run_dir} ({error.strerror})") from None
    return last if resume else None


class SaveOnInterrupt(OnExceptionCheckpoint):
    """Lightning's on-exception checkpoint, written as `last.ckpt`, for SIGINT and SIGTERM only.

    Other exceptions (a diverged loss, a bug) save nothing, so they never replace the last good
    checkpoint. The parent deletes its file when a run ends normally (it is meant as a leftover
    of a crash); here the file is last.ckpt, which a finished run keeps.
    """

    def __init__(self, checkpoints: Path):
        super().__init__(checkpoints, filename="last")
        self.signal: str | None = None

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            self.signal = "SIGINT" if isinstance(exception, KeyboardInterrupt) else "SIGTERM"
            super().on_exception(trainer, pl_module, exception)

    def teardown(self, trainer, pl_module, stage):
        pass  # keep last.ckpt


def read_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint, unpickled with `weights_only=True`: tensors and plain data only.

    Our checkpoints hold nothing else (no allow-list is needed), so a file that does is refused
    with a one-line `UserError` before anything in it runs; so is an unreadable one.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        culprit = f" ({found.group(1)})" if found else ""
        raise UserError(f"checkpoint: {path} holds pickled objects other than tensors and plain data{culprit}; "
                        f"refused, since loading them could run code") from None
    except (OSError, RuntimeError, EOFError, KeyError, ValueError) as error:
        reason = (str(error).splitlines() or [""])[0]
        raise UserError(f"checkpoint: {path} is not a readable checkpoint ({type(error).__name__}: {reason})") from None
    if not isinstance(checkpoint, dict) or not {"global_step", "state_dict", "hyper_parameters"} <= checkpoint.keys():
        raise UserError(f"checkpoint: {path} is not a textvae training checkpoint")
    return checkpoint


def checkpoint_step(path: Path) -> int:
    return int(read_checkpoint(path)["global_step"])


def source_commit(directory: Path) -> str | None:
    """The git commit checked out at `directory` if it is the top of a git work tree, else None."""
    try:
        result = subprocess.run(["git", "-C", str(directory), "rev-parse", "--show-toplevel", "HEAD"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = result.stdout.split()
    if result.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != directory.resolve():
        return None
    return lines[1]


def run_info() -> dict:
    """What run.json records: the textvae version and git commit (null outside a git checkout;
    git_dirty: tracked files differ from it) that started or last resumed the run."""
    import textvae

    source = Path(textvae.__file__).resolve().parent.parent
    commit = source_commit(source)
    dirty = None
    if commit is not None:  # diff-index reads the index without refreshing (locking) it
        dirty = subprocess.run(["git", "-C", str(source), "diff-index", "--quiet", "HEAD", "--"],
                               capture_output=True, timeout=30).returncode != 0
    return {"version": textvae.__version__, "git_commit": commit, "git_dirty": dirty,
            "python": platform.python_version(), "torch": torch.__version__, "lightning": L.__version__}


def train(config: Config, resume: bool = False, overwrite: bool = False) -> Path:
    """Train a model as `config` says; returns the run directory."""
    run_dir = Path(config.output_dir)
    child = is_launched_child()
    logger_names = resolve_loggers(config.trainer.logger)  # a logger's missing package fails before any change
    hf_parts = load_parts(config.model)  # so does a pretrained model that cannot be loaded
    resume_from = run_dir / "checkpoints" / "last.ckpt" if resume else None
    resume_step = None
    if not child:
        resume_from = prepare_run_dir(run_dir, resume, overwrite)
        if resume_from is not None:
            resume_step = checkpoint_step(resume_from)  # refuses a checkpoint that is not plain data
    L.seed_everything(config.seed, workers=True, verbose=False)
    lm = hf_parts.get("decoder")  # a pretrained decoder's corpus is tokenised with its LM's tokenizer
    datamodule = TextDataModule(config, text_tokenizer(lm[1]) if lm is not None else None)
    datamodule.prepare_data()
    datamodule.setup()
    system = VAESystem(config.to_dict(), datamodule.tokenizer.get_vocab_size(), datamodule.tokenizer, hf_parts)

    checkpoints = run_dir / "checkpoints"
    interrupt = SaveOnInterrupt(checkpoints)
    monitor = f"valid/{config.trainer.best_by}"
    # best.ckpt is only ever exported, never resumed from: weights only (no optimizer state, which is
    # twice the model's size under AdamW). last.ckpt, the one a resume needs, is whole; it is written
    # after every validation and every checkpoint_every_n_steps.
    callbacks = [
        ModelCheckpoint(dirpath=checkpoints, filename="best", monitor=monitor, mode="min", save_top_k=1,
                        save_weights_only=True, enable_version_counter=False),
        ModelCheckpoint(dirpath=checkpoints, save_top_k=0, save_last=True, enable_version_counter=False),
        ModelCheckpoint(dirpath=checkpoints, save_top_k=0, save_last=True, enable_version_counter=False,
                        every_n_train_steps=config.trainer.checkpoint_every_n_steps),
        interrupt,
    ]
    patience = config.trainer.early_stopping_patience
    early_stopping = EarlyStopping(monitor=monitor, mode="min", patience=patience) if patience else None
    if early_stopping is not None:
        callbacks.append(early_stopping)
    loggers = make_loggers(logger_names, run_dir)
    kwargs = config.trainer.lightning_kwargs()
    if kwargs["enable_progress_bar"] is None:
        kwargs["enable_progress_bar"] = sys.stderr.isatty()
    precision = str(kwargs["precision"])
    accelerator = kwargs["accelerator"]
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and resolve_device("auto").type == "cpu")
    if precision.startswith("bf16") and on_cpu and bf16_fallback(torch.device("cpu"), f"trainer.precision {precision}"):
        kwargs["precision"] = "32-true"
    try:
        trainer = L.Trainer(**kwargs, default_root_dir=run_dir, callbacks=callbacks, logger=loggers,
                            use_distributed_sampler=False, enable_model_summary=False)
    except (ValueError, MisconfigurationException, ModuleNotFoundError) as error:
        raise UserError(f"config: trainer: {str(error).splitlines()[0]}") from None
    if not child:  # config, data and trainer settings are good: only now does the run directory change
        if overwrite and resume_from is None:
            for name in ("checkpoints", "logs"):  # model/ stays until a new export replaces it
                shutil.rmtree(run_dir / name, ignore_errors=True)
        atomic_write_text(run_dir / "config.yaml", dump_config(config))
        info = {**run_info(), "precision": str(trainer.precision)}  # after a bf16 fallback: 32-true
        atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2) + "\n")
        if resume_step is not None:
            trim_log(run_dir / "logs" / "metrics.csv", resume_step)  # re-logged from this step on
    resolve_device(trainer.strategy.root_device)  # on CUDA: TF32 float32 matmuls, as Lightning recommends
    try:
        with warnings.catch_warnings():
            # With an OnExceptionCheckpoint among the callbacks Lightning reads ckpt_path=None as
            # "last" and warns twice on every fresh run; a fresh run has none (prepare_run_dir).
            warnings.filterwarnings("ignore", message=r".*ckpt_path.*")
            trainer.fit(system, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    except (SystemExit, SIGTERMException):
        if interrupt.signal is None:
            raise
    if interrupt.signal is not None:
        raise Interrupted(f"train: {interrupt.signal} at step {trainer.global_step}; saved {interrupt.ckpt_path}; "
                          f"continue with --resume", 130 if interrupt.signal == "SIGINT" else 143)
    if early_stopping is not None and early_stopping.wait_count >= patience:
        log.info("train: stopped early at step %d: %s did not improve for %d validations",
                 trainer.global_step, monitor, patience)
    if not trainer.is_global_zero:
        return run_dir
    # The best checkpoint is always checkpoints/best.ckpt of this run directory. (The callback's own
    # best_model_path is restored from the checkpoint, so in a copied run it names the original.)
    best = checkpoints / "best.ckpt"
    finish_run(run_dir, config, datamodule, str(best if best.is_file() else checkpoints / "last.ckpt"),
               trainer.strategy.root_device)
    return run_dir


def load_checkpoint_model(path: str | Path, tokenizer, device: str | torch.device = "cpu") -> TextVAE:
    checkpoint = read_checkpoint(path)
    hparams = checkpoint["hyper_parameters"]
    system = VAESystem(hparams["config"], hparams["vocab_size"], tokenizer)
    system.load_state_dict(checkpoint["state_dict"])
    return TextVAE(system.model.to(resolve_device(device)), tokenizer, system.config)


def finish_run(run_dir: Path, config: Config, datamodule: TextDataModule, checkpoint: str,
               device: str | torch.device = "cpu") -> None:
    """Export the best checkpoint to `model/` first, so that a run stopped during evaluation still
    leaves a model (and runs/latest points at it); then write metrics.json, the anomaly quantiles
    (into model/config.json), samples.txt and curves.png. Evaluation and samples run on `device` (train
    passes the trainer's root device)."""
    vae = load_checkpoint_model(checkpoint, datamodule.tokenizer, device)
    vae.extra["checkpoint"] = Path(checkpoint).name
    vae.zlib_dict = dictionary_from_ids(vae.tokenizer, datamodule.corpus["train"].ids)  # for `complexity`
    vae.save_pretrained(run_dir / "model")
    point_latest(run_dir)
    log.info("train: exported %s to %s", Path(checkpoint).name, run_dir / "model")
    corpus = datamodule.corpus
    training_text = training_sentences(vae, corpus["train"].ids)
    metrics, scores = {}, {}
    for split in ("valid", "test"):
        metrics[split], scores[split] = evaluate(vae, corpus[split].ids, training_text)
    valid = scores["valid"]
    valid_text = list(decode_ids(vae.tokenizer, (corpus["valid"].ids[i] for i in range(len(valid.nll)))))
    stats = validation_stats(valid.nll, valid.rec, valid.kl, valid.tokens, valid_text, vae.zlib_dict)
    about = {"iw_samples": config.eval.iw_samples, "split": "valid", "sentences": len(valid.nll)}
    vae.extra["score_stats"] = {**about, "scores": stats}
    # The per-token quantiles again, in the form textvae versions before score_stats read.
    vae.extra["score_quantiles"] = {**about, "nats_per_token": stats["nll_per_token"]["quantiles"]}
    vae.save_config(run_dir / "model")
    metrics["iw_samples"] = config.eval.iw_samples
    metrics["prior_strategy"] = PRIOR_STRATEGY
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    samples = vae.sample(config.eval.num_samples_txt, strategy="sample", seed=config.seed) \
        if config.eval.num_samples_txt else []
    atomic_write_text(run_dir / "samples.txt", "".join(f"{s}\n" for s in samples))
    plot_curves(run_dir / "logs" / "metrics.csv", run_dir / "curves.png")
    log.info("valid: %s", {k: round(v, 3) for k, v in metrics["valid"].items()})
    log.info("test: %s", {k: round(v, 3) for k, v in metrics["test"].items()})


def point_latest(run_dir: Path) -> None:
    """Make runs/latest (in the working directory) a symlink to `run_dir`, atomically."""
    latest = Path("runs") / "latest"
    latest.parent.mkdir(exist_ok=True)
    with atomic_path(latest) as tmp:
        tmp.symlink_to(run_dir.resolve(), target_is_directory=True)
