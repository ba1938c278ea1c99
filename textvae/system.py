"""The Lightning layer: the LightningModule (ELBO objective, KL weight and rate control, word
dropout, optimizers, logging) and the LightningDataModule over textvae.data's corpora and loaders.

One `_shared_step(batch, stage)` serves train/valid/test and logs `stage/rec`, `stage/kl`,
`stage/elbo` (nats per sentence, batch-size weighted, so epoch values are per-sentence means
over the split) plus `train/beta` and `train/loss`; `loss_terms` computes them without logging.
The loss is rec + beta * KL per sentence, averaged over the batch, with the KL floored per
dimension by the free bits (`kl.free_bits`, or `kl.target_rate` / latent_dim); the logged KL is
never floored. With `kl.ae_steps` the first steps train a plain autoencoder (beta 0, no floor),
after which the decoder is re-initialised and the schedule (or controller) starts (Li et al.
2019). `model.bow_weight` adds that weight times a bag-of-words NLL of each sentence given its z
(Zhao et al. 2017; logged as `stage/bow`), an auxiliary loss outside the ELBO that teaches the
encoder fast. Validation and test use no word dropout and beta = 1, so `valid/elbo` is the
true negative ELBO. beta is a pure function of `global_step` under a schedule, or the state of
the rate controller (`kl.target_rate` with `rate_control: beta`), a buffer saved in every
checkpoint; either way a resumed run continues where it stopped. A non-finite loss stops
training with an error naming the step.
"""

from __future__ import annotations

import logging
import math

import lightning as L
import torch

from textvae.config import Config, from_dict
from textvae.data import Split, load_corpus, make_loader, split_files
from textvae.errors import UserError
from textvae.losses import controlled_log_beta, effective_free_bits, free_bits_kl, gaussian_kl, kl_weight
from textvae.model import VAE
from textvae.pretrained import load_parts
from textvae.tokenizer import clip_framed, special_ids

log = logging.getLogger("textvae")


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


class VAESystem(L.LightningModule):
    def __init__(self, config: dict, vocab_size: int, tokenizer=None, hf_parts: dict | None = None):
        super().__init__()
        # Checkpoints keep plain data only (they are loaded with weights_only=True): the tokenizer
        # and pre-loaded HF parts (see VAE; loaded here by the names in the config when not given)
        # stay out of the hyperparameters.
        self.save_hyperparameters(ignore=["tokenizer", "hf_parts"])
        self.config: Config = from_dict(Config, config)
        if hf_parts is None:
            hf_parts = load_parts(self.config.model)
        self.model = VAE(self.config.model, vocab_size, tokenizer, hf_parts)
        kl = self.config.kl
        self.controlled = kl.target_rate is not None and kl.rate_control == "beta"
        self.free_bits = effective_free_bits(kl, self.config.model.latent_dim)
        # The rate controller's state; present (and checkpointed) in every run so checkpoints
        # always have the same keys.
        self.register_buffer("log_beta", torch.tensor(math.log(kl.min_beta), dtype=torch.float64))
        self.run_steps: int | None = None  # optimizer steps in the whole run, once fitting starts

    def on_fit_start(self) -> None:
        total = self.trainer.estimated_stepping_batches
        self.run_steps = int(total) if math.isfinite(total) else None

    def beta(self) -> float:
        """The KL weight for the current training step: 0 while the autoencoder pretrains
        (kl.ae_steps), then the controller's, or the schedule's counted from the end of it."""
        ae_steps = self.config.kl.ae_steps
        if self.global_step < ae_steps:
            return 0.0
        if self.controlled:
            return math.exp(float(self.log_beta))
        run_steps = self.run_steps - ae_steps if self.run_steps is not None else None
        return kl_weight(self.global_step - ae_steps, self.config.kl, run_steps)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        kl = self.config.kl
        if kl.ae_steps and kl.ae_reset_decoder and self.global_step == kl.ae_steps:
            self.restart_decoder()

    def restart_decoder(self) -> None:
        """End of autoencoder pretraining: a freshly initialised decoder, with no optimizer moments,
        learns from the pretrained encoder's codes under the KL (Li et al. 2019). Resuming from a
        checkpoint saved at the switch repeats it; one saved later has the restarted decoder."""
        reset = self.model.reset_decoder()
        for optimizer in self.trainer.optimizers if self._trainer is not None else []:
            for parameter in reset:
                optimizer.state.pop(parameter, None)
        log.info("training: autoencoder pretraining ended at step %d; decoder re-initialised", self.global_step)

    def loss_terms(self, tokens: torch.Tensor, stage: str) -> dict[str, torch.Tensor]:
        """Per-sentence rec and KL (B,), the loss and the beta it used, for a batch of `stage`."""
        training = stage == "train"
        out = self.model(tokens, word_dropout=self.config.model.word_dropout if training else 0.0)
        kl_per_dim = gaussian_kl(out["mean"].float(), out["logvar"].float())  # (B, D)
        beta = self.beta() if training else 1.0
        kl_term = free_bits_kl(kl_per_dim, self.free_bits) if training else kl_per_dim.sum(-1)
        loss = (out["rec"] + beta * kl_term).mean()
        terms = {"rec": out["rec"], "kl": kl_per_dim.sum(-1), "beta": torch.tensor(beta)}
        if "bow" in out:  # an auxiliary loss: it trains the encoder, and is no part of the ELBO
            terms["bow"] = out["bow"]
            loss = loss + self.config.model.bow_weight * out["bow"].mean()
        return {**terms, "loss": loss}

    def _shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        tokens = batch["tokens"]  # (B, T)
        terms = self.loss_terms(tokens, stage)
        rec, kl, loss = terms["rec"], terms["kl"], terms["loss"]
        batch_size = tokens.size(0)
        logged = {f"{stage}/rec": rec.mean(), f"{stage}/kl": kl.mean(), f"{stage}/elbo": (rec + kl).mean()}
        if "bow" in terms:
            logged[f"{stage}/bow"] = terms["bow"].mean()
        if stage == "train":
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"training: loss is {loss.item()} at step {self.global_step}; stopped "
                                       f"(try a lower optim.lr or trainer.gradient_clip_val)")
            if self.controlled and self.global_step >= self.config.kl.ae_steps:
                self.update_controller(kl.mean().detach())
            logged.update({"train/loss": loss, "train/beta": terms["beta"]})
            self.log_dict(logged, on_step=True, on_epoch=False, batch_size=batch_size, prog_bar=False)
            self.log("elbo", logged["train/elbo"], on_step=True, prog_bar=True, logger=False, batch_size=batch_size)
        else:
            self.log_dict(logged, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True,
                          prog_bar=stage == "valid")
        return loss

    def update_controller(self, batch_kl: torch.Tensor) -> None:
        """Move log(beta) against the KL error; under DDP every rank sees the mean over ranks."""
        if self._trainer is not None and self.trainer.world_size > 1:
            batch_kl = self.trainer.strategy.reduce(batch_kl, reduce_op="mean")
        self.log_beta.fill_(controlled_log_beta(float(self.log_beta), float(batch_kl), self.config.kl))

    def training_step(self, batch, batch_idx):
        return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._shared_step(batch, "valid")

    def test_step(self, batch, batch_idx):
        self._shared_step(batch, "test")

    def parameter_groups(self) -> list[dict]:
        """All weights at optim.lr, except those of a pretrained encoder or decoder (HF models): at
        lr * its lr_scale in a group of their own, or left out when frozen."""
        model = self.config.model
        parts = [(getattr(self.model.encoder, "hf", None), model.encoder),
                 (getattr(self.model.decoder, "hf", None), model.decoder)]
        parts = [(hf, settings) for hf, settings in parts if hf is not None]
        if not parts:
            return [{"params": list(self.parameters())}]
        pretrained = {id(p) for hf, _ in parts for p in hf.parameters()}
        groups = [{"params": [p for p in self.parameters() if id(p) not in pretrained]}]
        for hf, settings in parts:
            if not settings.freeze:
                groups.append({"params": list(hf.parameters()), "lr": self.config.optim.lr * settings.lr_scale})
        return groups

    def configure_optimizers(self):
        optim = self.config.optim
        optimizer_class = torch.optim.AdamW if optim.optimizer == "adamw" else torch.optim.Adam
        optimizer = optimizer_class(self.parameter_groups(), lr=optim.lr, betas=tuple(optim.betas),
                                    weight_decay=optim.weight_decay)
        # A run with no end (max_epochs and max_steps -1) has no cosine horizon; the config schema rejects
        # that combination, and a constant schedule never reads `total`.
        steps = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        total = max(1, int(steps)) if math.isfinite(steps) else 1

        def factor(step: int) -> float:
            if step < optim.warmup_steps:
                return (step + 1) / optim.warmup_steps
            if optim.scheduler == "constant":
                return 1.0
            progress = min(1.0, (step - optim.warmup_steps) / max(1, total - optim.warmup_steps))
            return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class TextDataModule(L.LightningDataModule):
    """Train/valid/test loaders for a config; the tokenizer is trained on train unless given (a
    pretrained decoder's: pretrained.text_tokenizer)."""

    def __init__(self, config: Config, tokenizer=None):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.corpus: dict[str, Split] = {}

    def prepare_data(self):
        if self.config.data.dataset != "hf":
            split_files(self.config.data)  # downloads PTB once, on the main process only

    def setup(self, stage: str | None = None):
        if not self.corpus:
            self.corpus, self.tokenizer = load_corpus(self.config.data, self.tokenizer)
            # Validation and test keep full sentences, but the model reads at most max_words
            # tokens (its position tables): their loaders cut longer ones, counted here.
            max_words = self.config.model.max_words
            for name in ("valid", "test"):
                _, cut = clip_framed(self.corpus[name].ids, max_words)
                if cut:
                    log.warning("data: %d %s sentences are longer than the %d tokens the model reads; "
                                "validation sees their first %d", cut, name, max_words, max_words)

    def _loader(self, split: str, shuffle: bool, batch_size: int):
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        data = self.config.data
        if split == "train":  # memory-mapped ids with their lengths
            ids, lengths = self.corpus[split].ids, self.corpus[split].lengths
        else:
            ids, lengths = clip_framed(self.corpus[split].ids, self.config.model.max_words)[0], None
        return make_loader(ids, batch_size, shuffle, self.config.seed, data.bucket_pool,
                           world, rank, data.num_workers, special_ids(self.tokenizer).pad, lengths)

    def train_dataloader(self):
        return self._loader("train", True, self.config.data.batch_size)

    def val_dataloader(self):
        return self._loader("valid", False, self.config.data.eval_batch_size)

    def test_dataloader(self):
        return self._loader("test", False, self.config.data.eval_batch_size)
