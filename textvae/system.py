"""The LightningModule: ELBO objective with KL annealing, word dropout, optimizers, logging.

One `_shared_step(batch, stage)` serves train/valid/test and logs `stage/rec`, `stage/kl`,
`stage/elbo` (nats per sentence, batch-size weighted, so epoch values are per-sentence means
over the split) plus `train/beta` and `train/loss`. The loss is rec + beta * KL per sentence,
averaged over the batch, with the KL floored per dimension by `kl.free_bits`. beta is a pure
function of `global_step`, so a resumed run continues the schedule where it stopped.
A non-finite loss stops training with an error naming the step.
"""

from __future__ import annotations

import math

import lightning as L
import torch

from textvae.config import Config, from_dict
from textvae.errors import UserError
from textvae.losses import free_bits_kl, gaussian_kl, kl_weight
from textvae.model import VAE


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


class VAESystem(L.LightningModule):
    def __init__(self, config: dict, vocab_size: int):
        super().__init__()
        self.save_hyperparameters()
        self.config: Config = from_dict(Config, config)
        self.model = VAE(self.config.model, vocab_size)

    def _shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        tokens = batch["tokens"]  # (B, T)
        training = stage == "train"
        out = self.model(tokens, word_dropout=self.config.model.word_dropout if training else 0.0)
        kl_per_dim = gaussian_kl(out["mean"].float(), out["logvar"].float())  # (B, D)
        kl = kl_per_dim.sum(-1)  # (B,)
        rec = out["rec"]
        beta = kl_weight(self.global_step, self.config.kl) if training else 1.0
        loss = (rec + beta * free_bits_kl(kl_per_dim, self.config.kl.free_bits)).mean()
        batch_size = tokens.size(0)
        logged = {f"{stage}/rec": rec.mean(), f"{stage}/kl": kl.mean(), f"{stage}/elbo": (rec + kl).mean()}
        if training:
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"training: loss is {loss.item()} at step {self.global_step}; stopped "
                                       f"(try a lower optim.lr or trainer.gradient_clip_val)")
            logged.update({"train/loss": loss, "train/beta": torch.tensor(beta)})
            self.log_dict(logged, on_step=True, on_epoch=False, batch_size=batch_size, prog_bar=False)
            self.log("elbo", logged["train/elbo"], on_step=True, prog_bar=True, logger=False, batch_size=batch_size)
        else:
            self.log_dict(logged, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True,
                          prog_bar=stage == "valid")
        return loss

    def training_step(self, batch, batch_idx):
        return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._shared_step(batch, "valid")

    def test_step(self, batch, batch_idx):
        self._shared_step(batch, "test")

    def configure_optimizers(self):
        optim = self.config.optim
        optimizer_class = torch.optim.AdamW if optim.optimizer == "adamw" else torch.optim.Adam
        optimizer = optimizer_class(self.parameters(), lr=optim.lr, betas=tuple(optim.betas),
                                    weight_decay=optim.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self.trainer is not None else 1

        def factor(step: int) -> float:
            if step < optim.warmup_steps:
                return (step + 1) / optim.warmup_steps
            if optim.scheduler == "constant":
                return 1.0
            progress = min(1.0, (step - optim.warmup_steps) / max(1, total - optim.warmup_steps))
            return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
