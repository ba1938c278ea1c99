"""A randomly initialised GPT-2-shaped causal LM over a corpus' own vocabulary, saved as an HF
directory, so that the pretrained-decoder path (`model.decoder.type: pretrained`) can be trained
from scratch and compared with the native transformer decoder on the same tokens.

    python scripts/scratch_lm.py --config configs/ptb_transformer_lowrate.yaml --out runs/scratch_gpt2_4l [--data.KEY VALUE ...]
    textvae train --config configs/ptb_transformer_lowrate.yaml --model.decoder.type pretrained \\
        --model.decoder.pretrained runs/scratch_gpt2_4l ...

The vocabulary is the one textvae learns from the config's training split (the same ids the
native decoder predicts), so per-token perplexities of the two are directly comparable. The shape
defaults to the native PTB transformer decoder's, with 4 layers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from textvae.config import load_config
from textvae.data import load_corpus
from textvae.tokenizer import BOS_ID, EOS_ID, PAD_ID, save_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/ptb_transformer.yaml", help="its data section gives the vocabulary")
    parser.add_argument("--out", required=True, help="directory to save the LM and tokenizer in")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--feedforward", type=int, default=1024)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--positions", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args, overrides = parser.parse_known_args()  # the rest: config overrides, as `textvae train` takes them

    from transformers import GPT2Config, GPT2LMHeadModel

    config = load_config(args.config, overrides)
    _, tokenizer = load_corpus(config.data, splits=("train",))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, out)
    torch.manual_seed(args.seed)
    lm_config = GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_positions=args.positions, n_embd=args.width,
                           n_layer=args.layers, n_head=args.heads, n_inner=args.feedforward,
                           resid_pdrop=args.dropout, embd_pdrop=args.dropout, attn_pdrop=args.dropout,
                           bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    lm = GPT2LMHeadModel(lm_config)
    lm.save_pretrained(out)
    print(f"saved a random {args.layers}-layer GPT-2 ({lm.num_parameters():,} parameters, "
          f"vocabulary {tokenizer.get_vocab_size()}) to {out}")


if __name__ == "__main__":
    main()
