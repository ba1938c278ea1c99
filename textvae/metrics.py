"""Text-VAE metrics as pure, no-grad functions (definitions as in the text-VAE literature; docs/metrics.md).

Pitfalls worth knowing:
- `iw_nll` encodes each sentence once and evaluates K codes per sentence in large decoder
  batches; the estimate is a stochastic upper bound on -log p(x) that tightens as K grows
  (K = 1 is the single-sample ELBO). Weights are combined with logsumexp.
- `mutual_information` needs the aggregate posterior over the *whole split*: computing it on
  one batch caps MI at log(batch size) and biases it low.
- `active_units` uses the variance over the split of posterior means (Burda et al. 2016).
- `ppl` divides by the number of predicted tokens: words plus one `<eos>` per sentence.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, NamedTuple

import torch

from textvae.model import VAE
from textvae.tokenizer import PAD_ID

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_density(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, exp(logvar)) summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mean).pow(2) / logvar.exp()).sum(-1)


class IWEstimate(NamedTuple):
    nll: torch.Tensor  # (B,) importance-weighted -log p(x)
    elbo: torch.Tensor  # (B,) single-sample ELBO of the first code: rec + log q(z|x) - log p(z)
    rec: torch.Tensor  # (B,) -log p(x|z) of the first code


@torch.no_grad()
def iw_nll(model: VAE, tokens: torch.Tensor, samples: int, max_rows: int = 1024,
           generator: torch.Generator | None = None,
           posterior: tuple[torch.Tensor, torch.Tensor] | None = None) -> IWEstimate:
    """Importance-weighted -log p(x) per sentence (B,) with `samples` codes from q(z|x), with the
    single-sample ELBO and reconstruction NLL of the first code (so K = 1 gives exactly rec + kl
    of that code). `posterior`: (mean, logvar) of q(z|x) if already computed.

    -log p(x) ~= -logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] + log K.
    """
    mean, logvar = posterior if posterior is not None else model.encode(tokens)  # (B, D)
    mean, logvar = mean.float(), logvar.float()
    batch = tokens.size(0)
    chunk = max(1, min(samples, max_rows // batch))
    log_weights, first_rec = [], None
    for start in range(0, samples, chunk):
        count = min(chunk, samples - start)
        noise = torch.randn((count, *mean.shape), generator=generator, device=mean.device)  # (k, B, D)
        z = mean + noise * torch.exp(0.5 * logvar)  # (k, B, D)
        rec = model.reconstruction_nll(tokens.repeat(count, 1), z.reshape(count * batch, -1)).float()
        first_rec = rec[:batch] if first_rec is None else first_rec
        log_prior = gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z))  # (k, B)
        log_posterior = gaussian_log_density(z, mean, logvar)  # (k, B)
        log_weights.append(-rec.view(count, batch) + log_prior - log_posterior)
    log_weights = torch.cat(log_weights)  # (K, B)
    nll = -(torch.logsumexp(log_weights, dim=0) - math.log(samples))
    return IWEstimate(nll, -log_weights[0], first_rec)


def iw_batch_size(samples: int, rows: int = 1024) -> int:
    """Sentences per batch so that one decoder call holds about `rows` (sentence, sample) pairs."""
    return max(8, rows // max(1, samples))


def ppl(nll_sum: float, tokens: int) -> float:
    """Perplexity from summed NLL (nats) over `tokens` predicted tokens (words + <eos>)."""
    return math.exp(nll_sum / tokens)


def target_tokens(tokens: torch.Tensor, pad_id: int = PAD_ID) -> torch.Tensor:
    """Predicted tokens per framed sentence (B,): every non-pad token but <bos>."""
    return (tokens[:, 1:] != pad_id).sum(-1)


@torch.no_grad()
def mutual_information(mean: torch.Tensor, logvar: torch.Tensor, chunk: int = 1024,
                       generator: torch.Generator | None = None) -> float:
    """I(x; z) under q (Hoffman & Johnson 2016), with the aggregate posterior over all N rows.

    MI = E_x E_q(z|x)[log q(z|x)] - E_q(z)[log q(z)], q(z) = 1/N sum_n q(z|x_n); one z per x.
    The first term is the analytic negative entropy of each posterior. log q(z_i|x_n) for all
    pairs comes from expanding the square, sum_d (z_id - m_nd)^2 / v_nd = z^2 @ (1/v)^T
    - 2 z @ (m/v)^T + sum_d m^2/v, so memory is O(chunk * N), never O(chunk * N * D), and
    everything stays on the device of `mean`.

    Pitfall: this is the whole-split estimate. He et al. (2019) average per-batch estimates,
    whose aggregate posterior has only a batch of components; theirs is capped at
    log(batch size) and is not comparable with this one. Either is capped at log N.
    """
    mean, logvar = mean.double(), logvar.double()
    count, dim = mean.shape
    negative_entropy = (-0.5 * dim * (LOG_2PI + 1) - 0.5 * logvar.sum(-1)).mean()
    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    z = mean + noise * torch.exp(0.5 * logvar)  # (N, D)
    precision = torch.exp(-logvar)  # (N, D)
    # Per-component constant: -0.5 * (D log 2pi + sum log v + sum m^2 / v)
    constant = -0.5 * (dim * LOG_2PI + logvar.sum(-1) + (mean.pow(2) * precision).sum(-1))  # (N,)
    log_aggregate = []
    for start in range(0, count, chunk):
        part = z[start: start + chunk]  # (c, D)
        quadratic = part.pow(2) @ precision.T - 2 * part @ (mean * precision).T  # (c, N)
        density = constant.unsqueeze(0) - 0.5 * quadratic  # (c, N): log q(z_i | x_n)
        log_aggregate.append(torch.logsumexp(density, dim=1) - math.log(count))
    return float(negative_entropy - torch.cat(log_aggregate).mean())


ACTIVE_UNIT_THRESHOLD = 0.01  # Var_x(E_q[z_d|x]) above which a dimension counts as active (Burda et al. 2016)


def active_units(mean: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Dimensions whose posterior mean varies across sentences: Var_x(E_q[z_d|x]) > threshold."""
    return int((mean.double().var(dim=0) > threshold).sum())


def exact_share(hypotheses: list[str], references: list[str]) -> float:
    """The share of hypotheses equal to their reference, word for word (whitespace ignored)."""
    return sum(h.split() == r.split() for h, r in zip(hypotheses, references)) / len(references)


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU-4 (torchmetrics) of hypotheses against one reference each, in [0, 100]."""
    from torchmetrics.text import BLEUScore

    return 100.0 * float(BLEUScore(n_gram=4)(hypotheses, [[reference] for reference in references]))


def distinct_n(sentences: Iterable[str], n: int) -> float:
    """Distinct n-grams over all n-grams of whitespace tokens in `sentences` (0 if there are none)."""
    grams = Counter()
    for sentence in sentences:
        words = sentence.split()
        grams.update(tuple(words[i: i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance between two word sequences (insertions, deletions, substitutions)."""
    previous = list(range(len(b) + 1))
    for i, word in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other)))
        previous = current
    return previous[-1]


def interpolation_smoothness(paths: list[list[str]]) -> tuple[float, float]:
    """(interp_distinct, interp_step) of decoded interpolation paths (endpoints included).

    interp_distinct: mean number of distinct sentences per path; a latent the decoder ignores
    gives about 1, a useful one as many as there are points.
    interp_step: mean word-level edit distance between neighbouring points, divided by the
    longer of the two sentences (0 = unchanged, 1 = nothing in common); a smooth path has many
    small steps, where a path that jumps once has one step of about 1 and zeros elsewhere.
    """
    distinct, steps = [], []
    for path in paths:
        distinct.append(len(set(path)))
        for a, b in zip(path, path[1:]):
            a, b = a.split(), b.split()
            steps.append(edit_distance(a, b) / max(len(a), len(b), 1))
    return sum(distinct) / len(distinct), sum(steps) / len(steps)
