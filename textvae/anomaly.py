"""Anomaly scores of sentences, their validation statistics, and how well a score separates
in-domain from out-of-domain text (AUROC, AUPR, FPR at 95% TPR).

Every score is "higher = more anomalous" and comes from one importance-weighted pass over the
lines (`evaluate.score_ids`, K codes from q(z|x)); docs/anomaly.md gives each formula and its paper:

- `nll`: -log p(x) in nats (Burda et al. 2016), mostly a measure of length;
- `nll_per_token`: `nll` over the predicted tokens (words + <eos>), the default;
- `rate`: KL(q(z|x) || p(z)) in nats, how far the encoder moves the line's code from the prior;
- `rec`: the reconstruction term -E_q log p(x|z) in nats;
- `typicality`: |nll_per_token - m| / s with m and s the validation mean and standard deviation
  (Nalisnick et al. 2019b): two-sided, so that lines more likely than typical are suspect too;
- `complexity`: the model's code length minus zlib's, in bits (Serra et al. 2020): -log2 p(x)
  less 8 x the bytes of the line deflated at level 9 with a preset dictionary of training
  sentences (`zlib_dictionary`), without which zlib's output on a 40-byte line is mostly header
  and the score would only measure length;
- `ratio`: `nll` less a background model's NLL of the same line, in nats (a likelihood ratio,
  Ren et al. 2019; Gangal et al. 2020 for text): what the in-domain model finds unlikely beyond
  what makes the line unlikely as English at all. Backgrounds: `unigram` (the training split's
  token frequencies, add-one smoothed, over the model's own tokens), another textvae model, or a
  Hugging Face causal LM (a directory, or a local .gguf file) through its own tokenizer;
- `length`: the predicted tokens alone, the confound every other score is checked against.

Statistics (mean, standard deviation and 1,001 quantiles of each score on the validation split)
are what thresholds and `typicality` rest on; `score_stats` computes them and training stores them
in the model's config.json.
"""

from __future__ import annotations

import math
import random
import zlib

import numpy as np
import torch

from textvae.errors import UserError
from textvae.tokenizer import decode_ids

SCORES = ("nll", "nll_per_token", "rate", "rec", "typicality", "complexity", "ratio", "length")
NEEDS_BACKGROUND = ("ratio",)  # scores without stored validation statistics
NO_BACKGROUND = ("--by ratio needs --background MODEL (unigram, a textvae model directory, or a Hugging Face "
                 "causal LM directory or .gguf file)")
DEFAULT_SCORE = "nll_per_token"
QUANTILES = 1001  # stored per score: the 0th, 0.1st, ..., 100th percentiles


def check_scores(names: list[str] | tuple[str, ...] | str) -> list[str]:
    """`names` (one or several) as a list, each a known score; a UserError naming the first unknown."""
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise UserError(f"--by needs at least one score: {', '.join(SCORES)}")
    for name in names:
        if name not in SCORES:
            raise UserError(f"--by must be one of {', '.join(SCORES)}, got {name!r}")
    return list(dict.fromkeys(names))


def raw_scores(nll: torch.Tensor, rec: torch.Tensor, kl: torch.Tensor, tokens: torch.Tensor) -> dict[str, np.ndarray]:
    """The scores that need no statistics, from one scoring pass (float64 NumPy arrays)."""
    nll, rec, kl, tokens = (t.detach().double().cpu().numpy() for t in (nll, rec, kl, tokens))
    return {"nll": nll, "nll_per_token": nll / tokens, "rate": kl, "rec": rec, "length": tokens}


def score_stats(scores: dict[str, np.ndarray]) -> dict[str, dict]:
    """Mean, standard deviation and QUANTILES quantiles of each score (rounded to 5 decimals)."""
    stats = {}
    for name, values in scores.items():
        quantiles = np.quantile(values, np.linspace(0, 1, QUANTILES))
        stats[name] = {"mean": round(float(values.mean()), 6), "std": round(float(values.std()), 6),
                       "quantiles": [round(float(q), 5) for q in quantiles]}
    return stats


ZLIB_DICT_BYTES = 32768  # zlib's largest preset dictionary
ZLIB_DICT_SENTENCES = 4096  # training sentences drawn to fill it


def zlib_dictionary(sentences: list[str]) -> bytes:
    """Up to ZLIB_DICT_BYTES of `sentences` (one per line, UTF-8), the last bytes kept: zlib reaches
    back 32 KiB, and the end of a preset dictionary is what it finds cheapest to refer to."""
    return "".join(f"{line}\n" for line in sentences).encode("utf-8")[-ZLIB_DICT_BYTES:]


def sample_sentences(count: int, limit: int = ZLIB_DICT_SENTENCES, seed: int = 0) -> list[int]:
    """Up to `limit` positions among `count` sentences, drawn without replacement (seeded)."""
    return sorted(random.Random(seed).sample(range(count), min(limit, count)))


def dictionary_from_ids(tokenizer, ids) -> bytes:
    """`zlib_dictionary` of ZLIB_DICT_SENTENCES training sentences drawn from framed `ids` (lists
    or a memory-mapped data.TokenIds), decoded to text."""
    positions = sample_sentences(len(ids))
    return zlib_dictionary(list(decode_ids(tokenizer, [ids[i] for i in positions])))


def token_counts(ids, vocab_size: int) -> np.ndarray:
    """Occurrences of each id in framed `ids` (a memory-mapped data.TokenIds, or lists)."""
    if hasattr(ids, "token_counts"):
        return ids.token_counts(vocab_size)
    return np.bincount(np.concatenate([np.asarray(x, dtype=np.int64) for x in ids]), minlength=vocab_size)


def unigram_nll(ids: list[list[int]], counts: np.ndarray) -> np.ndarray:
    """-log p(x) in nats of each framed sentence under add-one smoothed unigram frequencies
    `counts`, over its predicted tokens (all but <bos>, <eos> included, as the VAE's nll)."""
    log_probs = np.log((counts + 1.0) / (counts.sum() + len(counts)))
    return np.array([-log_probs[np.asarray(x[1:], dtype=np.int64)].sum() for x in ids], dtype=np.float64)


@torch.no_grad()
def causal_lm_nll(module, tokenizer, lines: list[str], batch_size: int = 32) -> np.ndarray:
    """-log p(x) in nats of each line under a Hugging Face causal LM prepared by
    pretrained.load_hf (kind "decoder"): the line's own tokens framed as `bos ... eos`, every
    token after `bos` predicted, as the VAE's nll counts its tokens."""
    from textvae.pretrained import lm_specials

    specials = lm_specials(tokenizer)
    device = next(module.parameters()).device
    out = []
    for start in range(0, len(lines), batch_size):
        encoded = tokenizer(lines[start: start + batch_size], add_special_tokens=False)["input_ids"]
        framed = [[specials.bos, *ids, specials.eos] for ids in encoded]
        width = max(len(ids) for ids in framed)
        tokens = torch.tensor([ids + [specials.pad] * (width - len(ids)) for ids in framed], device=device)
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in framed], device=device)
        logits = module(input_ids=tokens, attention_mask=mask).logits[:, :-1].float()  # (B, T-1, V)
        log_probs = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)  # (B, T-1)
        out.append(-(log_probs * mask[:, 1:]).sum(-1).double().cpu())
    return torch.cat(out).numpy()


def zlib_bits(lines: list[str], dictionary: bytes) -> np.ndarray:
    """8 x the bytes of each line (UTF-8) deflated at level 9 with `dictionary` preset."""
    sizes = []
    for line in lines:
        compressor = zlib.compressobj(9, zdict=dictionary) if dictionary else zlib.compressobj(9)
        sizes.append(len(compressor.compress(line.encode("utf-8")) + compressor.flush()))
    return 8.0 * np.asarray(sizes, dtype=np.float64)


def with_complexity(scores: dict[str, np.ndarray], lines: list[str], dictionary: bytes) -> dict[str, np.ndarray]:
    """`scores` plus `complexity`: -log2 p(x) (from `nll` in nats) less zlib's bits for the line."""
    return {**scores, "complexity": scores["nll"] / math.log(2) - zlib_bits(lines, dictionary)}


def validation_stats(nll: torch.Tensor, rec: torch.Tensor, kl: torch.Tensor, tokens: torch.Tensor,
                     lines: list[str], dictionary: bytes) -> dict[str, dict]:
    """`score_stats` of every score on the validation split's scoring pass (`lines`: its text),
    `typicality` included (its reference mean and spread are this split's own)."""
    scores = with_complexity(raw_scores(nll, rec, kl, tokens), lines, dictionary)
    stats = score_stats(scores)
    stats.update(score_stats({"typicality": with_typicality(scores, stats)["typicality"]}))
    return stats


def with_typicality(scores: dict[str, np.ndarray], stats: dict[str, dict]) -> dict[str, np.ndarray]:
    """`scores` plus `typicality` from the validation mean and spread of `nll_per_token`."""
    reference = stats["nll_per_token"]
    spread = reference["std"] if reference["std"] > 0 else 1.0
    return {**scores, "typicality": np.abs(scores["nll_per_token"] - reference["mean"]) / spread}


def percentile_of(stats: dict[str, dict], name: str, percentile: float) -> float:
    """The `percentile`-th percentile (0-100) of score `name` on the validation split (linear
    between the stored quantiles)."""
    values = stats[name]["quantiles"]
    return float(np.interp(percentile / 100 * (len(values) - 1), np.arange(len(values)), values))


def detection_metrics(in_domain, out_of_domain) -> dict[str, float]:
    """How well a score (higher = more anomalous) finds out-of-domain lines (the positives):

    - `auroc`: P(score_out > score_in) + P(tie) / 2, the Mann-Whitney statistic over all pairs;
    - `aupr`: average precision, sum over distinct thresholds t (descending) of
      (recall(t) - recall(previous t)) * precision(t), lines with score >= t flagged;
    - `fpr95`: the share of in-domain lines flagged at the highest threshold that flags at least
      95% of the out-of-domain lines.
    Tied scores are one threshold: no order among equal scores is assumed.
    """
    negatives = np.asarray(in_domain, dtype=np.float64)
    positives = np.asarray(out_of_domain, dtype=np.float64)
    if negatives.size == 0 or positives.size == 0:
        raise UserError("evaluate-ood: both the in-domain and the out-of-domain side need at least one line")
    scores = np.concatenate([positives, negatives])
    labels = np.concatenate([np.ones(positives.size), np.zeros(negatives.size)])
    # Mann-Whitney through average ranks: ties share their rank.
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average_rank = first + (counts + 1) / 2  # 1-based rank shared by each group of ties
    ranks = np.empty_like(scores)
    ranks[order] = np.repeat(average_rank, counts)
    auroc = (ranks[labels == 1].sum() - positives.size * (positives.size + 1) / 2) / (positives.size * negatives.size)
    # One point per distinct threshold, from the highest down.
    descending = np.argsort(-scores, kind="stable")
    sorted_labels, sorted_scores = labels[descending], scores[descending]
    last_of_group = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    true_positives = np.cumsum(sorted_labels)[last_of_group]
    flagged = (np.arange(scores.size) + 1)[last_of_group]
    false_positives = flagged - true_positives
    recall = true_positives / positives.size
    precision = true_positives / flagged
    aupr = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    reached = np.nonzero(recall >= 0.95 - 1e-12)[0][0]
    return {"auroc": float(auroc), "aupr": aupr, "fpr95": float(false_positives[reached] / negatives.size)}
