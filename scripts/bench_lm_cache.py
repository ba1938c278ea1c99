"""Cached against uncached decoding through a pretrained-decoder VAE; one JSON line per case.

    python scripts/bench_lm_cache.py                       # a random GPT-2-small-shaped LM (124M)
    python scripts/bench_lm_cache.py --lm DIR              # any saved causal LM

Without --lm, a GPT-2 with transformers' default shape (12 layers, width 768, 50,257 embeddings)
and random weights is saved to a temporary directory with a small byte-level BPE tokenizer (the
vocabulary size only changes which ids are decoded, not the cost). Greedy decoding of --codes
prior codes for exactly --max-length tokens each (<eos> is masked), through the LM's key/value
cache and by re-running the prefix at every step; the outputs must be identical.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from textvae.benchmarking import NoEOS
from textvae.config import DecoderConfig, ModelConfig
from textvae.generate import decode_codes
from textvae.model import VAE
from textvae.pretrained import load_hf, text_tokenizer


def random_gpt2(directory: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(["the cat saw the ball"], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    end = "<|endoftext|>"
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=end, eos_token=end,
                            unk_token=end).save_pretrained(directory)
    GPT2LMHeadModel(GPT2Config(bos_token_id=0, eos_token_id=0)).save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm", help="a saved causal LM (default: a random GPT-2-small-shaped one)")
    parser.add_argument("--codes", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=24)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lm = args.lm or str(random_gpt2(Path(tmp)))
        parts = load_hf(lm, "--lm", "decoder")
        config = ModelConfig(latent_dim=32, decoder=DecoderConfig(type="pretrained", pretrained=lm))
        tokenizer = text_tokenizer(parts[1])
        model = VAE(config, tokenizer.get_vocab_size(), tokenizer, {"decoder": parts}).eval().to(args.device)
    z = torch.randn(args.codes, 32, generator=torch.Generator().manual_seed(0)).to(args.device)
    decode_codes(model, z[:2], "greedy", 2)  # warm-up, untimed
    outputs = {}
    for use_cache in (True, False):
        start = time.perf_counter()
        outputs[use_cache] = decode_codes(NoEOS(model), z, "greedy", args.max_length, use_cache=use_cache)
        elapsed = time.perf_counter() - start
        print(json.dumps({"lm": args.lm or "random gpt2-small", "use_cache": use_cache, "codes": args.codes,
                          "tokens": args.max_length, "seconds": round(elapsed, 3),
                          "sentences_per_s": round(args.codes / elapsed, 2), "threads": torch.get_num_threads(),
                          "device": args.device}))
    print(json.dumps({"identical": outputs[True] == outputs[False]}))


if __name__ == "__main__":
    main()
