"""Training throughput of a config through the real Lightning training step; prints one JSON line.

    python scripts/bench_train.py --config configs/ptb.yaml [--steps 60] [--warmup 10] [--unbucketed]
                                  [--both] [--device cuda] [--model.decoder.hidden 512 ...]

tokens_per_s counts predicted non-pad tokens (words + <eos>) of the timed steps; mfu is the
achieved model FLOP/s over the fp32 matmul rate measured in the same run (mfu_bf16: over the
bf16 rate). --unbucketed uses random padded batches; --both runs bucketed then unbucketed in
one process and adds their ratio. With model.encoder.pretrained the FLOPs include the HF
encoder's (textvae.benchmarking.pretrained_encoder_flops_per_token: forward only when it is frozen).
--device (auto, cpu, cuda, cuda:N or mps) trains on that one device instead of the config's
trainer.accelerator/devices, and the matmul rate behind MFU is measured there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from textvae.benchmarking import (device_arg, machine, matmul_gflops, model_flops_per_token, peak_rss_mb,
                      pretrained_decoder_flops_per_token, pretrained_encoder_flops_per_token, synchronize)
from textvae.config import load_config
from textvae.data import load_corpus, make_loader
from textvae.pretrained import load_parts, text_tokenizer
from textvae.system import VAESystem
from textvae.tokenizer import special_ids


class StepTimer(Callback):
    def __init__(self, warmup: int, pad_id: int):
        self.warmup, self.pad_id = warmup, pad_id
        self.tokens = self.padded = self.real = 0
        self.start = self.end = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.warmup and self.start is None:
            synchronize(module.device)  # a GPU's queued warm-up steps are not timed
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.start is not None:
            targets = batch["tokens"][:, 1:]
            real = int((targets != self.pad_id).sum())
            self.tokens += real
            self.real += real
            self.padded += targets.numel()
            synchronize(module.device)
            self.end = time.perf_counter()


def trainer_device(device: torch.device) -> dict:
    """Lightning's accelerator/devices for one resolved device."""
    if device.type == "cuda":
        return {"accelerator": "gpu", "devices": [device.index]}
    return {"accelerator": device.type, "devices": 1}


def run(config, train_ids, tokenizer, steps: int, warmup: int, bucketed: bool,
        device: torch.device | None = None, hf_parts: dict | None = None) -> dict:
    L.seed_everything(config.seed, verbose=False)
    pad_id = special_ids(tokenizer).pad  # a pretrained decoder's LM has its own
    loader = make_loader(train_ids, config.data.batch_size, shuffle=True, seed=config.seed,
                         pool=config.data.bucket_pool if bucketed else 1, pad_id=pad_id)
    vocab_size = tokenizer.get_vocab_size()
    system = VAESystem(config.to_dict(), vocab_size, tokenizer, hf_parts)
    timer = StepTimer(warmup, pad_id)
    kwargs = config.trainer.lightning_kwargs()
    kwargs.update(max_steps=warmup + steps, max_epochs=-1, enable_progress_bar=False, logger=False,
                  enable_checkpointing=False, limit_val_batches=0, val_check_interval=None, check_val_every_n_epoch=None)
    if device is not None:
        kwargs.update(trainer_device(device))
    trainer = L.Trainer(**kwargs, callbacks=[timer], enable_model_summary=False)
    trainer.fit(system, train_dataloaders=loader)
    seconds = timer.end - timer.start
    mean_length = sum(len(x) - 1 for x in train_ids) / len(train_ids)
    flops = model_flops_per_token(config.model, vocab_size, mean_length)
    if config.model.encoder.pretrained is not None:
        flops += pretrained_encoder_flops_per_token(system.model.encoder, train_ids)
    if config.model.decoder.type == "pretrained":
        flops += pretrained_decoder_flops_per_token(system.model.decoder, mean_length)
    return {"bucketed": bucketed, "device": str(trainer.strategy.root_device),
            "tokens_per_s": timer.tokens / seconds, "steps_per_s": steps / seconds,
            "padding_share": 1 - timer.real / timer.padded, "flops_per_token": flops,
            "model_gflops": flops * timer.tokens / seconds / 1e9}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=60, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--unbucketed", action="store_true", help="random padded batches instead of buckets")
    parser.add_argument("--both", action="store_true", help="bucketed and unbucketed in one run, with their ratio")
    parser.add_argument("--device", type=device_arg, default=None,
                        help="auto, cpu, cuda, cuda:N or mps (default: the config's trainer.accelerator/devices)")
    args, overrides = parser.parse_known_args(argv)
    config = load_config(args.config, overrides)
    device = args.device
    hf_parts = load_parts(config.model)  # as train() does: a pretrained decoder brings its tokenizer
    lm = hf_parts.get("decoder")
    corpus, tokenizer = load_corpus(config.data, text_tokenizer(lm[1]) if lm is not None else None, splits=("train",))
    matmul_device = device if device is not None else torch.device("cpu")
    fp32 = matmul_gflops(torch.float32, device=matmul_device)
    bf16 = matmul_gflops(torch.bfloat16, device=matmul_device)
    modes = [True, False] if args.both else [not args.unbucketed]
    results = [run(config, corpus["train"].ids, tokenizer, args.steps, args.warmup, mode, device, hf_parts)
               for mode in modes]
    out = dict(results[0])
    out.update(config=args.config, overrides=overrides, precision=config.trainer.precision,
               batch_size=config.data.batch_size, steps=args.steps, matmul_device=str(matmul_device),
               matmul_gflops_fp32=fp32,
               matmul_gflops_bf16=bf16, mfu=out["model_gflops"] / fp32, mfu_bf16=out["model_gflops"] / bf16,
               peak_rss_mb=peak_rss_mb(), machine=machine())
    if args.both:
        out["unbucketed"] = {k: results[1][k] for k in ("tokens_per_s", "steps_per_s", "padding_share")}
        out["unbucketed"]["mfu"] = results[1]["model_gflops"] / fp32
        out["bucketed_speedup"] = results[0]["tokens_per_s"] / results[1]["tokens_per_s"]
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
