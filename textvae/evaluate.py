"""Evaluation of a trained model: the text-VAE metrics (docs/metrics.md) plus the latent-use metrics,
no Lightning.

- `score_ids` is the one importance-weighted scoring loop: length-sorted batches, the posterior
  computed once per sentence, K codes per sentence (metrics.iw_nll). `TextVAE.score`,
  `evaluate` and scripts/bench_eval.py all go through it.
- `evaluate` turns the per-sentence scores into the metric table and adds what shows whether
  the latent is used: greedy reconstructions of posterior means (`rec_bleu`, `rec_exact`; with
  `eval.rec_beam`, beam-search ones as well: `rec_bleu_beam`, `rec_exact_beam`),
  10-point slerp paths between fixed random pairs of the split (`interp_distinct`,
  `interp_step`), and prior samples (`distinct_1/2`, `novel` from *sampled* decodes, as
  the literature reports them; `distinct_*_greedy` from greedy decodes of the same codes
  shows how much the output depends on z at all).
- Everything runs on the model's device and at its precision, per-sentence results included
  (they leave it only as the Python numbers of the table); random draws come from seeded
  generators on that device, so the same model, split, seed and device give the same numbers.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from textvae.errors import UserError
from textvae.latent import slerp
from textvae.losses import gaussian_kl
from textvae.metrics import (active_units, corpus_bleu, distinct_n, exact_share, interpolation_smoothness,
                             iw_batch_size, iw_nll, mutual_information, ppl, target_tokens)
from textvae.tokenizer import decode_ids, encode_batch, length_batches, sentence_hash, special_ids

if TYPE_CHECKING:
    from textvae.trained import TrainedModel

log = logging.getLogger("textvae")

INTERP_POINTS = 10  # points on each interpolation path, endpoints included
PROBE_SENTENCES = 16  # sentences (and codes) in the timed batch behind the time estimate
ANNOUNCE_SECONDS = 60  # evaluations expected to take longer say so first
# How the prior samples behind distinct-n and novelty are decoded (written beside the metrics).
PRIOR_STRATEGY = "sample (temperature 1, no top-k/top-p)"


class Scores(NamedTuple):
    """Per-sentence results of `score_ids`, in input order (all on the model's device)."""

    nll: torch.Tensor  # (N,) importance-weighted -log p(x)
    rec: torch.Tensor  # (N,) -log p(x|z) of the first code z ~ q(z|x)
    kl: torch.Tensor  # (N,) KL(q(z|x) || p(z)), analytic
    tokens: torch.Tensor  # (N,) predicted tokens (words + <eos>)
    mean: torch.Tensor  # (N, D) posterior means
    logvar: torch.Tensor  # (N, D) posterior log-variances


@torch.no_grad()
def score_ids(vae: "TrainedModel", ids: list[list[int]], iw_samples: int, seed: int = 0,
              progress: bool | None = None) -> Scores:
    """Importance-weighted NLL with `iw_samples` codes, rec, KL and the posterior of each framed
    sentence in `ids`. Sentences are batched by length so that one decoder call holds about a
    thousand (sentence, code) pairs."""
    from tqdm.auto import tqdm

    if iw_samples < 1:
        raise UserError(f"--iw-samples must be at least 1, got {iw_samples}")
    generator = torch.Generator(device=vae.device).manual_seed(seed)
    count = len(ids)
    nll, rec, kl, tokens = (torch.zeros(count, device=vae.device) for _ in range(4))
    means, logvars = (torch.zeros(count, vae.latent_dim, device=vae.device) for _ in range(2))
    pad_id = special_ids(vae.tokenizer).pad
    batches = list(length_batches(ids, iw_batch_size(iw_samples), pad_id))
    show = sys.stderr.isatty() and count > 1000 if progress is None else progress
    for positions, batch in tqdm(batches, desc=f"scoring (K={iw_samples})", disable=not show, leave=False):
        batch = batch.to(vae.device)
        with vae.autocast():
            mean, logvar = (t.float() for t in vae.model.encode(batch))
            estimate = iw_nll(vae.model, batch, iw_samples, generator=generator, posterior=(mean, logvar))
        nll[positions], rec[positions] = estimate.nll.float(), estimate.rec.float()
        kl[positions] = gaussian_kl(mean, logvar).sum(-1)
        tokens[positions] = target_tokens(batch, pad_id).float()
        means[positions], logvars[positions] = mean, logvar
    return Scores(nll, rec, kl, tokens, means, logvars)


def _pairs(count: int, pairs: int, seed: int) -> list[tuple[int, int]]:
    """`pairs` fixed random pairs of distinct sentence positions (the same for every model and
    device: Python ints from a CPU generator)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(pairs):
        a, b = torch.randperm(count, generator=generator)[:2].tolist()
        out.append((a, b))
    return out


@torch.no_grad()
def evaluate(vae: "TrainedModel", ids: list[list[int]], training_text: TrainingSentences | None = None,
             iw_samples: int | None = None, seed: int = 0, progress: bool | None = None):
    """The metrics of `vae` on framed sentences `ids`, and the per-sentence `Scores`.

    Counts come from `vae.config.eval` (`max_sentences`: only the first that many sentences of
    `ids` are evaluated; `bleu_sentences`, `interp_pairs`, `prior_samples`); `training_text`
    (training_sentences: the corpus for novelty) enables the prior-sample metrics.
    """
    settings = vae.config.eval
    iw_samples = iw_samples or settings.iw_samples
    if settings.max_sentences is not None:
        ids = ids[: settings.max_sentences]
    ids, cut = vae.clip_to_model(ids)
    with_prior = training_text is not None and bool(settings.prior_samples)
    seconds = estimate_seconds(vae, ids, iw_samples, with_prior)
    if seconds > ANNOUNCE_SECONDS:
        log.info("evaluate: %s sentences at K = %d%s: about %s (from a timed batch); eval.max_sentences or "
                 "--max-sentences evaluates fewer", f"{len(ids):,}", iw_samples,
                 f" and {settings.prior_samples:,} prior samples" if with_prior else "", _duration(seconds))
    scores = score_ids(vae, ids, iw_samples, seed, progress)
    total_tokens = int(scores.tokens.sum().item())
    metrics = {
        "rec": scores.rec.mean().item(), "kl": scores.kl.mean().item(),
        "elbo": (scores.rec + scores.kl).mean().item(), "nll": scores.nll.mean().item(),
        "ppl": ppl(scores.nll.sum().item(), total_tokens),
        "mi": mutual_information(scores.mean, scores.logvar,
                                 generator=torch.Generator(device=vae.device).manual_seed(seed)),
        "au": active_units(scores.mean), "sentences": len(ids), "tokens": total_tokens,
        "cut_to_model": cut,  # sentences longer than the model reads, scored on their first max_words
    }
    if vae.tokenizer.decoder is not None:  # subword tokens: also per whitespace word + <eos>, as word-level models
        words = sum(len(text.split()) + 1 for text in decode_ids(vae.tokenizer, (x[1:] for x in ids)))
        metrics["ppl_word"] = ppl(scores.nll.sum().item(), words)
    metrics.update(latent_use(vae, ids, scores.mean, seed))
    if with_prior:
        metrics.update(prior_diversity(vae, training_text, settings.prior_samples, seed))
    return metrics, scores


def decode_count(settings, sentences: int, with_prior: bool) -> int:
    """Codes `evaluate` decodes, in greedy decodes: reconstructions (and their beam search, about
    `rec_beam` greedy decodes each), interpolation points, and prior samples twice (sampled and
    greedy)."""
    reconstructions = min(settings.bleu_sentences or sentences, sentences) * (1 + settings.rec_beam)
    paths = settings.interp_pairs * INTERP_POINTS if sentences >= 2 else 0
    return reconstructions + paths + (2 * settings.prior_samples if with_prior else 0)


@torch.no_grad()
def estimate_seconds(vae: "TrainedModel", ids: list[list[int]], iw_samples: int, with_prior: bool) -> float:
    """Seconds `evaluate` should take on `ids`, extrapolated from a timed batch: scoring of
    `PROBE_SENTENCES` sentences spread over the split (scaled by predicted tokens) and greedy
    decoding of as many prior codes (scaled by the codes decoded). Batching makes the full run
    somewhat cheaper per token than the probe, so the estimate errs high."""
    if not ids:
        return 0.0
    probe = ids[:: max(1, len(ids) // PROBE_SENTENCES)][:PROBE_SENTENCES]
    start = time.perf_counter()
    score_ids(vae, probe, iw_samples, progress=False)
    scoring = (time.perf_counter() - start) * sum(len(x) - 1 for x in ids) / sum(len(x) - 1 for x in probe)
    generator = torch.Generator(device=vae.device).manual_seed(0)
    codes = torch.randn(len(probe), vae.latent_dim, generator=generator, device=vae.device)
    start = time.perf_counter()
    vae.decode(codes, strategy="greedy", max_length=vae.clamp_length(_longest(probe) + 10))
    decoding = (time.perf_counter() - start) * decode_count(vae.config.eval, len(ids), with_prior) / len(probe)
    return scoring + decoding


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _longest(ids: list[list[int]]) -> int:
    return max(len(x) for x in ids) - 1  # words + <eos>


def latent_use(vae: "TrainedModel", ids: list[list[int]], means: torch.Tensor, seed: int = 0) -> dict:
    """rec_bleu / rec_exact from greedy decodes of posterior means, and interpolation metrics."""
    settings = vae.config.eval
    limit = settings.bleu_sentences or len(ids)
    references = list(decode_ids(vae.tokenizer, (x[1:] for x in ids[:limit])))
    # Hypotheses may run as long as the longest reference and a little more, so that BLEU's
    # brevity penalty and length mismatches count exactly as they would for full sentences.
    max_length = vae.clamp_length(_longest(ids[:limit]) + 10)
    hypotheses = vae.decode(means[:limit], strategy="greedy", max_length=max_length)
    metrics = {"rec_bleu": corpus_bleu(hypotheses, references), "rec_exact": exact_share(hypotheses, references)}
    if settings.rec_beam:  # the decoder's most likely sentence given z, nearer than greedy's
        beams = vae.decode(means[:limit], strategy="beam", beam_size=settings.rec_beam, max_length=max_length)
        metrics.update({"rec_bleu_beam": corpus_bleu(beams, references),
                        "rec_exact_beam": exact_share(beams, references)})
    if settings.interp_pairs and len(ids) >= 2:
        pairs = _pairs(len(ids), settings.interp_pairs, seed)
        t = torch.linspace(0, 1, INTERP_POINTS, device=means.device)
        paths = torch.cat([slerp(means[a], means[b], t) for a, b in pairs])  # (P * points, D)
        longest = _longest([ids[i] for pair in pairs for i in pair])
        decoded = vae.decode(paths, strategy="greedy", max_length=vae.clamp_length(longest + 10))
        paths = [decoded[i: i + INTERP_POINTS] for i in range(0, len(decoded), INTERP_POINTS)]
        distinct, step = interpolation_smoothness(paths)
        metrics.update({"interp_distinct": distinct, "interp_step": step})
    return metrics


def prior_diversity(vae: "TrainedModel", training_text: TrainingSentences, count: int, seed: int = 0) -> dict:
    """distinct-1/2 and novelty of `count` sampled decodes of prior codes, plus distinct-1/2 of
    greedy decodes of the same codes."""
    generator = torch.Generator(device=vae.device).manual_seed(seed)
    z = torch.randn(count, vae.latent_dim, generator=generator, device=vae.device)
    sampled = vae.decode(z, strategy="sample", seed=seed)
    greedy = vae.decode(z, strategy="greedy")
    return {"distinct_1": distinct_n(sampled, 1), "distinct_2": distinct_n(sampled, 2),
            "novel": float(training_text.novel(sampled).mean()),
            "distinct_1_greedy": distinct_n(greedy, 1), "distinct_2_greedy": distinct_n(greedy, 2)}


class TrainingSentences:
    """The training sentences as a set of 64-bit hashes of their token ids (tokenizer.sentence_hash),
    for novelty: a sample is novel when the ids of its text, as the model's tokenizer encodes it,
    are not those of any training sentence. Each lookup costs O(log N) in the sorted hash array
    (memory-mapped from the tokenisation cache for a corpus split), so novelty costs what the
    samples cost, not what the corpus does.

    - Word tokenizer: the ids are the whitespace-separated words, so this is exactly the text
      definition (whitespace-normalised samples against the decoded training sentences);
      an out-of-vocabulary training word and a sampled `<unk>` are the same id, as the decoded
      training text would show `<unk>` for it.
    - BPE and pretrained-LM tokenizers: the ids are the canonical encoding of the text, so a sample
      is novel when its decoded text differs from every training sentence (spacing included, the
      way the tokenizer reads it), however the decoder happened to spell it in tokens.
    - Hashes cover the full sentences, before training truncation; two distinct sentences share a
      64-bit hash with probability about N / 2^64 per sample.
    """

    def __init__(self, tokenizer, hashes: np.ndarray):
        self.tokenizer, self.hashes = tokenizer, hashes

    def novel(self, samples: list[str]) -> np.ndarray:
        """(n,) bool: which samples are not training sentences."""
        if not samples:
            return np.zeros(0, dtype=bool)
        wanted = np.fromiter((sentence_hash(ids) for ids in encode_batch(self.tokenizer, samples)),
                             dtype=np.int64, count=len(samples))
        if not len(self.hashes):
            return np.ones(len(samples), dtype=bool)
        positions = np.searchsorted(self.hashes, wanted).clip(max=len(self.hashes) - 1)
        return np.asarray(self.hashes[positions]) != wanted


def training_sentences(vae: "TrainedModel", ids) -> TrainingSentences:
    """The training split's sentences for novelty: a cached split (data.TokenIds) gives its
    memory-mapped hash set; framed id lists are hashed here."""
    if hasattr(ids, "hash_set"):
        return TrainingSentences(vae.tokenizer, ids.hash_set())
    hashes = np.unique(np.fromiter((sentence_hash(x[1:-1]) for x in ids), dtype=np.int64, count=len(ids)))
    return TrainingSentences(vae.tokenizer, hashes)
