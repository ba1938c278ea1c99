"""The configuration schema: typed dataclasses, one per section, every field with a default and
a one-line comment. Range checks live in `__post_init__`; each choice list is written once, as
the field's `Literal`, and checked from it (`choices`), so a config built in Python is checked
as one loaded from YAML. Errors are one-line `UserError`s naming the key."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from textvae.errors import UserError

PTB_ARCHIVE_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"


def _require(ok: bool, key: str, message: str, value: Any) -> None:
    if not ok:
        raise UserError(f"config: {key} {message}, got {value!r}")


def choices(cls: type, name: str) -> tuple:
    """The values field `name` of config dataclass `cls` allows: its `Literal` annotation is the one
    place each choice list is written."""
    return typing.get_args(typing.get_type_hints(cls)[name])


def _require_choice(config, name: str, key: str) -> None:
    allowed = choices(type(config), name)
    value = getattr(config, name)
    _require(value in allowed, key, f"must be one of {', '.join(map(repr, allowed))}", value)


@dataclass
class SplitNames:
    train: str = "train"  # the dataset's split that trains
    valid: Optional[str] = "validation"  # the split for validation; absent or null: carved from train
    test: Optional[str] = "test"  # the split for test; absent or null: carved from train


@dataclass
class DataConfig:
    dataset: Literal["ptb", "text", "hf"] = "ptb"  # ptb: Mikolov's split from `root`; text: your own files; hf: HF datasets
    root: str = "data/ptb"  # where the PTB files live (downloaded here once if absent)
    download_url: str = PTB_ARCHIVE_URL  # Mikolov's simple-examples.tgz, fetched when PTB is absent
    train_file: Optional[str] = None  # dataset=text: one sentence per line, UTF-8
    valid_file: Optional[str] = None  # dataset=text: validation sentences
    test_file: Optional[str] = None  # dataset=text: test sentences
    path: Optional[str] = None  # dataset=hf: Hub id, local dataset directory, save_to_disk folder, data file or loader name
    name: Optional[str] = None  # dataset=hf: the dataset's configuration name (load_dataset's `name`)
    data_files: Optional[str] = None  # dataset=hf: file or glob for load_dataset (path: parquet, json or csv)
    text_column: str = "text"  # dataset=hf: the column holding one sentence per row
    splits: SplitNames = field(default_factory=SplitNames)  # dataset=hf: which split serves as train/valid/test
    holdout: int = 2000  # dataset=hf: sentences carved from train (fixed seed 0) for a split the dataset lacks
    tokenizer: Literal["word", "bpe"] = "word"  # word: whitespace WordLevel (PTB); bpe: byte-level BPE
    vocab_size: int = 10000  # bpe only: target vocabulary size including special tokens
    min_frequency: int = 1  # word types seen fewer times in train map to <unk>
    tokenizer_sample: Optional[int] = 1_000_000  # the tokenizer learns from at most this many training sentences (null: all)
    limit: Optional[int] = None  # use only the first N sentences of each split (quick experiments)
    max_length: int = 96  # longer training sentences are truncated (counted); at most model.max_words
    batch_size: int = 64  # sentences per training batch (per device)
    eval_batch_size: int = 256  # sentences per evaluation batch
    bucket_pool: int = 100  # batches per sorting pool: bigger pools pad less, shuffle less
    num_workers: int = 0  # DataLoader workers, and processes that tokenise a corpus into the cache (0: one)

    def __post_init__(self):
        _require_choice(self, "dataset", "data.dataset")
        _require_choice(self, "tokenizer", "data.tokenizer")
        _require(self.vocab_size >= 260, "data.vocab_size", "must be >= 260", self.vocab_size)
        _require(self.min_frequency >= 1, "data.min_frequency", "must be >= 1", self.min_frequency)
        _require(self.limit is None or self.limit >= 1, "data.limit", "must be >= 1 or null", self.limit)
        _require(self.max_length >= 2, "data.max_length", "must be >= 2", self.max_length)
        _require(self.batch_size >= 1, "data.batch_size", "must be >= 1", self.batch_size)
        _require(self.eval_batch_size >= 1, "data.eval_batch_size", "must be >= 1", self.eval_batch_size)
        _require(self.bucket_pool >= 1, "data.bucket_pool", "must be >= 1", self.bucket_pool)
        _require(self.num_workers >= 0, "data.num_workers", "must be >= 0", self.num_workers)
        _require(self.holdout >= 1, "data.holdout", "must be >= 1", self.holdout)
        _require(self.tokenizer_sample is None or self.tokenizer_sample >= 1, "data.tokenizer_sample",
                 "must be >= 1 or null", self.tokenizer_sample)
        _require(self.dataset != "hf" or bool(self.path), "data.path", "must be set when data.dataset is 'hf'", self.path)


@dataclass
class EncoderConfig:
    layers: int = 2  # transformer encoder layers
    heads: int = 4  # attention heads; must divide width
    width: int = 256  # model width (token embedding size of the encoder)
    feedforward: int = 1024  # hidden size of each feed-forward block
    dropout: float = 0.1  # dropout inside the encoder layers
    max_positions: int = 512  # longest sentence the learned position table covers
    pretrained: Optional[str] = None  # HF encoder (Hub name or local dir) instead of the own one above (null: own)
    pooling: Literal["mean", "cls"] = "mean"  # pretrained: mean over its tokens, or its first (CLS) position
    freeze: bool = False  # pretrained: keep its weights fixed (eval mode, no gradients); only the pooling map trains
    lr_scale: float = 1.0  # pretrained: its weights train at optim.lr times this (fine-tuning wants less)

    def __post_init__(self):
        _require_choice(self, "pooling", "model.encoder.pooling")
        _require(self.lr_scale > 0, "model.encoder.lr_scale", "must be > 0", self.lr_scale)
        if self.pretrained is None:
            _require(not self.freeze, "model.encoder.freeze", "needs model.encoder.pretrained", self.freeze)
            _require(self.pooling == "mean", "model.encoder.pooling", "cls needs model.encoder.pretrained",
                     self.pooling)
            _require(self.lr_scale == 1.0, "model.encoder.lr_scale", "needs model.encoder.pretrained", self.lr_scale)
        else:
            _require(self.pretrained.strip() != "", "model.encoder.pretrained", "must name a model or directory",
                     self.pretrained)
        _require(self.layers >= 1, "model.encoder.layers", "must be >= 1", self.layers)
        _require(self.width >= 1 and self.heads >= 1 and self.width % self.heads == 0,
                 "model.encoder.heads", f"must divide model.encoder.width={self.width}", self.heads)
        _require(self.feedforward >= 1, "model.encoder.feedforward", "must be >= 1", self.feedforward)
        _require(0.0 <= self.dropout < 1.0, "model.encoder.dropout", "must be in [0, 1)", self.dropout)
        _require(self.max_positions >= 2, "model.encoder.max_positions", "must be >= 2", self.max_positions)


@dataclass
class DecoderConfig:
    type: Literal["gru", "transformer", "pretrained"] = "gru"  # decoder family; pretrained: an HF causal LM
    layers: int = 1  # GRU or transformer layers
    hidden: int = 512  # GRU hidden size / transformer width
    embed_dim: int = 256  # input token embedding size (gru; transformer uses `hidden`)
    heads: int = 4  # transformer attention heads; must divide hidden
    feedforward: int = 1024  # transformer feed-forward size
    dropout: float = 0.3  # dropout on embeddings and decoder outputs
    z_init_hidden: bool = True  # gru: z sets the initial hidden state of every layer
    z_concat_input: bool = True  # gru: z is concatenated to every input embedding
    z_skip: bool = False  # gru: a projection of z is added to every output, right before the softmax (skip-VAE)
    z_cross_attention: bool = True  # transformer: z is the cross-attention memory
    z_add_input: bool = True  # transformer: a projection of z is added to every input embedding
    memory_slots: int = 4  # transformer: z is projected to this many memory vectors
    tie_embeddings: bool = True  # share input embedding and output projection weights
    max_positions: int = 512  # transformer: longest sequence the position table covers
    pretrained: Optional[str] = None  # type pretrained: the causal LM (Hub name or local dir), with its own vocabulary
    latent_as_memory: bool = True  # pretrained: z is one extra key/value position in every layer (Optimus)
    latent_as_embedding: bool = True  # pretrained: a projection of z is added to every input embedding (Optimus)
    freeze: bool = False  # pretrained: keep the LM's weights fixed; only the z injection layers train
    lr_scale: float = 1.0  # pretrained: the LM's weights train at optim.lr times this (fine-tuning wants less)

    def __post_init__(self):
        _require_choice(self, "type", "model.decoder.type")
        _require(self.lr_scale > 0, "model.decoder.lr_scale", "must be > 0", self.lr_scale)
        if self.type == "pretrained":
            _require(self.pretrained is not None and self.pretrained.strip() != "", "model.decoder.pretrained",
                     "must name a causal LM (Hub name or local directory) when model.decoder.type is pretrained",
                     self.pretrained)
            _require(self.latent_as_memory or self.latent_as_embedding, "model.decoder.latent_as_embedding",
                     "must be true when latent_as_memory is false (z would be ignored)", self.latent_as_embedding)
        else:
            _require(self.pretrained is None, "model.decoder.pretrained", "needs model.decoder.type: pretrained",
                     self.pretrained)
            _require(not self.freeze, "model.decoder.freeze", "needs model.decoder.type: pretrained", self.freeze)
            _require(self.lr_scale == 1.0, "model.decoder.lr_scale", "needs model.decoder.type: pretrained",
                     self.lr_scale)
        _require(self.layers >= 1, "model.decoder.layers", "must be >= 1", self.layers)
        _require(self.hidden >= 1, "model.decoder.hidden", "must be >= 1", self.hidden)
        _require(self.embed_dim >= 1, "model.decoder.embed_dim", "must be >= 1", self.embed_dim)
        if self.type == "transformer":
            _require(self.heads >= 1 and self.hidden % self.heads == 0, "model.decoder.heads",
                     f"must divide model.decoder.hidden={self.hidden}", self.heads)
            _require(self.z_cross_attention or self.z_add_input, "model.decoder.z_add_input",
                     "must be true when z_cross_attention is false (z would be ignored)", self.z_add_input)
        elif self.type == "gru":
            _require(self.z_init_hidden or self.z_concat_input or self.z_skip, "model.decoder.z_concat_input",
                     "must be true when z_init_hidden and z_skip are false (z would be ignored)", self.z_concat_input)
        if self.type != "gru":
            _require(not self.z_skip, "model.decoder.z_skip", "needs model.decoder.type: gru", self.z_skip)
        _require(self.feedforward >= 1, "model.decoder.feedforward", "must be >= 1", self.feedforward)
        _require(0.0 <= self.dropout < 1.0, "model.decoder.dropout", "must be in [0, 1)", self.dropout)
        _require(self.memory_slots >= 1, "model.decoder.memory_slots", "must be >= 1", self.memory_slots)
        _require(self.max_positions >= 2, "model.decoder.max_positions", "must be >= 2", self.max_positions)


@dataclass
class ModelConfig:
    latent_dim: int = 32  # size of the Gaussian code z
    latent: Literal["gaussian", "none"] = "gaussian"  # none: the decoder alone, a language model (no encoder or z)
    word_dropout: float = 0.25  # probability a decoder input token (not <bos>/pad) becomes <unk>
    posterior_bn: float = 0.0  # BN-VAE (Zhu et al. 2020): posterior means batch-normalised to this scale (0: off)
    bow_weight: float = 0.0  # bag-of-words loss (Zhao et al. 2017): weight of -log p(words of x | z) in training (0: off)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # the inference network q(z|x)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)  # the generative network p(x|z)

    def __post_init__(self):
        _require(self.latent_dim >= 1, "model.latent_dim", "must be > 0", self.latent_dim)
        _require(0.0 <= self.word_dropout <= 1.0, "model.word_dropout", "must be in [0, 1]", self.word_dropout)
        _require(self.posterior_bn >= 0, "model.posterior_bn", "must be >= 0", self.posterior_bn)
        _require(self.bow_weight >= 0, "model.bow_weight", "must be >= 0", self.bow_weight)
        _require_choice(self, "latent", "model.latent")
        if self.latent == "none":  # nothing reads z (the encoder section is ignored): refuse what would act on z
            _require(self.bow_weight == 0, "model.bow_weight", "must be 0 with model.latent: none", self.bow_weight)
            _require(self.posterior_bn == 0, "model.posterior_bn", "must be 0 with model.latent: none",
                     self.posterior_bn)

    @property
    def max_words(self) -> int:
        """Longest sentence (tokens besides <bos>/<eos>) the model reads: the encoder takes
        `<bos> w1 .. wn <eos>` (n + 2 positions), a transformer decoder `<bos> w1 .. wn` (n + 1)."""
        limit = self.encoder.max_positions - 2
        if self.decoder.type == "transformer":
            limit = min(limit, self.decoder.max_positions - 1)
        return limit


@dataclass
class OptimConfig:
    optimizer: Literal["adam", "adamw"] = "adamw"  # torch.optim.Adam or AdamW
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.0  # decoupled for adamw, L2 for adam
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam moment decay rates
    warmup_steps: int = 0  # linear learning-rate warm-up from 0
    scheduler: Literal["constant", "cosine"] = "constant"  # after warm-up: constant, or cosine to min_lr_ratio
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr

    def __post_init__(self):
        _require_choice(self, "optimizer", "optim.optimizer")
        _require(self.lr > 0, "optim.lr", "must be > 0", self.lr)
        _require(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0", self.weight_decay)
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
                 "must be two numbers in [0, 1)", self.betas)
        _require(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0", self.warmup_steps)
        _require_choice(self, "scheduler", "optim.scheduler")
        _require(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]", self.min_lr_ratio)


LOGGERS = ("csv", "tensorboard", "wandb", "mlflow")  # trainer.logger names (loggers.py makes them)


@dataclass
class KLConfig:
    schedule: Literal["constant", "linear", "logistic", "cyclical"] = "linear"  # how beta rises with steps
    max_beta: float = 1.0  # final (or constant) KL weight
    warmup_steps: int = 10000  # linear: steps from 0 to max_beta
    k: float = 0.0025  # logistic: steepness (Bowman et al. 2016)
    x0: int = 2500  # logistic: step at which beta = max_beta / 2
    cycles: int = 4  # cyclical: number of cycles over total_steps (Fu et al. 2019)
    total_steps: Optional[int] = None  # cyclical: steps the cycles span (None: the whole run); then max_beta
    ratio: float = 0.5  # cyclical: share R of each cycle spent rising
    free_bits: float = 0.0  # per-dimension KL floor in nats (0 disables)
    target_rate: Optional[float] = None  # KL in nats per sentence to hold the latent at (None: off)
    rate_control: Literal["beta", "free_bits"] = "beta"  # beta: a controller sets beta; free_bits: a floor
    controller_gain: float = 0.02  # beta controller: change of log(beta) per step at 100% KL error
    min_beta: float = 0.0001  # beta controller: lowest beta (it starts there); max_beta is the highest
    ae_steps: int = 0  # autoencoder pretraining (Li et al. 2019): beta 0 for N steps, then the schedule
    ae_reset_decoder: bool = True  # after ae_steps the decoder restarts from a fresh initialisation

    def __post_init__(self):
        _require_choice(self, "schedule", "kl.schedule")
        _require(self.max_beta >= 0, "kl.max_beta", "must be >= 0", self.max_beta)
        _require(self.warmup_steps >= 0, "kl.warmup_steps", "must be >= 0", self.warmup_steps)
        _require(self.k > 0, "kl.k", "must be > 0", self.k)
        _require(self.cycles >= 1, "kl.cycles", "must be >= 1", self.cycles)
        _require(self.total_steps is None or self.total_steps >= 1, "kl.total_steps", "must be >= 1 or null",
                 self.total_steps)
        _require(0 < self.ratio <= 1, "kl.ratio", "must be in (0, 1]", self.ratio)
        _require(self.free_bits >= 0, "kl.free_bits", "must be >= 0", self.free_bits)
        _require(self.target_rate is None or self.target_rate > 0, "kl.target_rate", "must be > 0 or null",
                 self.target_rate)
        _require_choice(self, "rate_control", "kl.rate_control")
        _require(self.controller_gain > 0, "kl.controller_gain", "must be > 0", self.controller_gain)
        _require(self.ae_steps >= 0, "kl.ae_steps", "must be >= 0", self.ae_steps)
        _require(0 < self.min_beta <= self.max_beta, "kl.min_beta", f"must be in (0, kl.max_beta={self.max_beta}]",
                 self.min_beta)


@dataclass
class TrainerConfig:
    max_epochs: int = 10  # passes over the training data
    max_steps: int = -1  # stop after this many optimizer steps (-1: no limit)
    accelerator: str = "auto"  # cpu, gpu, mps or auto
    devices: Union[int, str, list[int]] = "auto"  # device count, list of ids, or auto
    strategy: str = "auto"  # auto, ddp, ddp_spawn, fsdp, ...
    num_nodes: int = 1  # machines for multi-node DDP
    precision: Union[str, int] = "32-true"  # 32-true, bf16-mixed (GPU, or CPU autocast), 16-mixed (GPU)
    gradient_clip_val: float = 1.0  # clip the gradient norm to this (0 disables)
    accumulate_grad_batches: int = 1  # batches per optimizer step
    log_every_n_steps: int = 50  # how often training metrics reach the CSV log
    val_check_interval: Union[int, float] = 1.0  # float: share of an epoch; int: steps between validations
    limit_train_batches: Union[int, float] = 1.0  # train on a share (float) or number (int) of batches
    limit_val_batches: Union[int, float] = 1.0  # validate on a share or number of batches (of every length)
    enable_progress_bar: Optional[bool] = None  # None: a bar on a terminal, quiet when piped
    check_val_every_n_epoch: Optional[int] = 1  # validate every N epochs (null: by val_check_interval steps only)
    deterministic: Union[bool, Literal["warn"]] = False  # true: deterministic torch kernels (slower); warn: warn only
    logger: Union[str, list[str], None] = None  # csv (always on) + tensorboard/wandb/mlflow; null: + tensorboard if installed
    checkpoint_every_n_steps: int = 500  # also save last.ckpt every this many steps (crash recovery)
    early_stopping_patience: Optional[int] = None  # validations with no lower valid/<best_by> before stopping (0/null: off)
    best_by: Literal["elbo", "rec"] = "elbo"  # best.ckpt and model/: lowest valid elbo, or rec (high-rate models)

    def __post_init__(self):
        _require_choice(self, "best_by", "trainer.best_by")
        _require(self.max_epochs >= -1, "trainer.max_epochs", "must be >= -1", self.max_epochs)
        _require(self.num_nodes >= 1, "trainer.num_nodes", "must be >= 1", self.num_nodes)
        _require(self.gradient_clip_val >= 0, "trainer.gradient_clip_val", "must be >= 0", self.gradient_clip_val)
        _require(self.accumulate_grad_batches >= 1, "trainer.accumulate_grad_batches", "must be >= 1",
                 self.accumulate_grad_batches)
        _require(self.log_every_n_steps >= 1, "trainer.log_every_n_steps", "must be >= 1", self.log_every_n_steps)
        _require(self.checkpoint_every_n_steps >= 1, "trainer.checkpoint_every_n_steps", "must be >= 1",
                 self.checkpoint_every_n_steps)
        _require(self.check_val_every_n_epoch is None or self.check_val_every_n_epoch >= 1,
                 "trainer.check_val_every_n_epoch", "must be >= 1 or null", self.check_val_every_n_epoch)
        _require(self.early_stopping_patience is None or self.early_stopping_patience >= 0,
                 "trainer.early_stopping_patience", "must be >= 0 or null", self.early_stopping_patience)
        if isinstance(self.logger, str):
            self.logger = [self.logger]
        _require(self.logger is None or all(name in LOGGERS for name in self.logger), "trainer.logger",
                 f"must name {', '.join(LOGGERS)} (one or a list)", self.logger)

    def lightning_kwargs(self) -> dict:
        """The arguments for `lightning.Trainer` (our own extras removed: training.py builds the loggers
        and the checkpoint and early-stopping callbacks)."""
        kwargs = dataclasses.asdict(self)
        for own in ("checkpoint_every_n_steps", "logger", "early_stopping_patience", "best_by"):
            del kwargs[own]
        kwargs["gradient_clip_val"] = self.gradient_clip_val or None
        return kwargs


@dataclass
class EvalConfig:
    iw_samples: int = 50  # K for the IW-NLL written to metrics.json after training (500 for papers)
    max_sentences: Optional[int] = None  # evaluate only the first N sentences of valid and test (None: all)
    prior_samples: int = 1000  # prior samples for distinct-n and novelty
    bleu_sentences: int = 1000  # sentences whose greedy reconstructions give rec_bleu and rec_exact (0: all)
    interp_pairs: int = 100  # fixed random sentence pairs for interp_distinct/interp_step (0: skip)
    rec_beam: int = 0  # beam width for rec_bleu_beam/rec_exact_beam: the same sentences by beam search (0: skip)
    num_samples_txt: int = 20  # prior samples written to samples.txt

    def __post_init__(self):
        _require(self.iw_samples >= 1, "eval.iw_samples", "must be >= 1", self.iw_samples)
        _require(self.max_sentences is None or self.max_sentences >= 1, "eval.max_sentences",
                 "must be >= 1 (or null for the whole split)", self.max_sentences)
        _require(self.prior_samples >= 1, "eval.prior_samples", "must be >= 1", self.prior_samples)
        _require(self.bleu_sentences >= 0, "eval.bleu_sentences", "must be >= 0", self.bleu_sentences)
        _require(self.interp_pairs >= 0, "eval.interp_pairs", "must be >= 0", self.interp_pairs)
        _require(self.rec_beam >= 0, "eval.rec_beam", "must be >= 0", self.rec_beam)
        _require(self.num_samples_txt >= 0, "eval.num_samples_txt", "must be >= 0", self.num_samples_txt)


@dataclass
class Config:
    seed: int = 0  # seeds data order, initialisation and sampling
    output_dir: Optional[str] = None  # run directory; None: runs/<config file name>
    data: DataConfig = field(default_factory=DataConfig)  # corpus, tokenizer, batching
    model: ModelConfig = field(default_factory=ModelConfig)  # encoder, decoder, latent
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimizer and learning-rate schedule
    kl: KLConfig = field(default_factory=KLConfig)  # KL weight schedule and free bits
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # passed to lightning.Trainer
    eval: EvalConfig = field(default_factory=EvalConfig)  # metrics computed after training

    def __post_init__(self):
        # Training sentences must fit the position tables. Longer evaluation sentences are cut to
        # model.max_words where they are tokenised (TrainedModel.clip_to_model), and counted.
        model = self.model
        positions = f"model.encoder.max_positions={model.encoder.max_positions}"
        if model.decoder.type == "transformer":
            positions += f" and model.decoder.max_positions={model.decoder.max_positions}"
        _require(self.data.max_length <= model.max_words, "data.max_length",
                 f"must be at most {model.max_words}, the tokens that {positions} hold besides <bos> and <eos>",
                 self.data.max_length)
        # Schedules that span "the whole run" need the run to end.
        unbounded = self.trainer.max_steps == -1 and self.trainer.max_epochs == -1
        _require(not (unbounded and self.optim.scheduler == "cosine"), "optim.scheduler",
                 "cosine needs a run that ends: set trainer.max_steps or trainer.max_epochs", self.optim.scheduler)
        _require(not (unbounded and self.kl.schedule == "cyclical" and self.kl.total_steps is None), "kl.total_steps",
                 "must be set for a cyclical schedule when trainer.max_steps and max_epochs are both -1",
                 self.kl.total_steps)
        _require(not (self.kl.ae_steps and self.kl.ae_reset_decoder and model.decoder.type == "pretrained"),
                 "kl.ae_reset_decoder", "must be false with a pretrained decoder (it would discard the LM's weights)",
                 self.kl.ae_reset_decoder)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
