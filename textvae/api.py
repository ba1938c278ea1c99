"""`TextVAE`, the public Python API over a trained model (no Lightning needed): everything a
`TrainedModel` does (load, save, encode, decode, sample, reconstruct; trained.py) plus
interpolation, scoring and anomaly thresholds, compression, and `evaluate_model`.

It sits on top: evaluation and compression take a `TrainedModel` from below and never import
this module. They (and the corpus readers) are imported where first used, so that `import
textvae.api`, and with it every CLI command, starts without torchmetrics, constriction or datasets.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from textvae.errors import UserError
from textvae.latent import slerp
from textvae.trained import (FORMAT_VERSION, TrainedModel, autocast, check_decoding, check_precision,
                             resolve_model_dir)

log = logging.getLogger("textvae")

__all__ = ["TextVAE", "evaluate_model", "slerp", "autocast", "check_decoding", "check_precision",
           "resolve_model_dir", "FORMAT_VERSION"]


class TextVAE(TrainedModel):
    """A trained text VAE with its tokenizer: sample, encode, decode, interpolate, score, compress."""

    def interpolate(self, a: str, b: str, steps: int = 8, method: str = "slerp", **decoding) -> list[str]:
        """Decoded path from a to b: `steps` intermediate points plus both endpoints."""
        if not a.strip() or not b.strip():
            raise UserError("interpolate: both sentences must be non-empty")
        if steps < 1:
            raise UserError(f"--steps must be at least 1, got {steps}")
        if method not in ("slerp", "linear"):
            raise UserError(f"--method must be 'slerp' or 'linear', got {method!r}")
        self.check_max_length(decoding.get("max_length"))
        start, end = self.encode([a, b])
        t = torch.linspace(0, 1, steps + 2, device=start.device)
        path = slerp(start, end, t) if method == "slerp" else (1 - t[:, None]) * start + t[:, None] * end
        path[0], path[-1] = start, end
        return self.decode(path, **decoding)

    def score(self, sentences: list[str], iw_samples: int | None = None, seed: int = 0,
              by: str | list[str] | None = None, background: str | None = None):
        """Per-sentence NLL in nats (IW estimate with `iw_samples` codes; 1 = single-sample ELBO) and
        the number of predicted tokens (words + <eos>) of each sentence. `iw_samples` defaults to
        the K the model's stored validation statistics were computed with (so scores and
        `anomaly_threshold` are on the same scale), or 100 for a model that stores none.

        With `by` (a score name of anomaly.SCORES, or several), a dict of those anomaly scores
        instead, float64 tensors, higher = more anomalous; `typicality` uses the validation
        statistics (`score_stats`), `ratio` a `background` (see `background_nll`)."""
        from textvae.anomaly import check_scores, raw_scores, with_complexity, with_typicality
        from textvae.evaluate import score_ids

        names = None if by is None else check_scores(by)
        ids = self.tokenize(sentences)
        scores = score_ids(self, ids, iw_samples or self.default_iw_samples, seed)
        if names is None:
            return scores.nll, scores.tokens.long()
        values = raw_scores(scores.nll, scores.rec, scores.kl, scores.tokens)
        if "typicality" in names:
            values = with_typicality(values, self.score_stats(iw_samples))
        if "complexity" in names:
            values = with_complexity(values, sentences, self.complexity_dictionary())
        if "ratio" in names:
            values["ratio"] = values["nll"] - self.background_nll(sentences, background, iw_samples, seed, ids)
        return {name: torch.from_numpy(values[name]) for name in names}

    def background_nll(self, sentences: list[str], background: str | None, iw_samples: int | None = None,
                       seed: int = 0, ids: list[list[int]] | None = None) -> np.ndarray:
        """-log p(x) in nats of each sentence under `background`: "unigram" (this model's tokens,
        add-one smoothed frequencies of its training split, counted when first asked for), a
        textvae model directory (its own tokens, IW estimate with `iw_samples` codes), or a Hugging
        Face causal LM directory or local .gguf file (its own tokens; loaded once). `ids`: the
        sentences already tokenised by this model."""
        import json
        from pathlib import Path

        from textvae.anomaly import NO_BACKGROUND, causal_lm_nll, token_counts, unigram_nll

        if background is None:
            raise UserError(NO_BACKGROUND)
        if background == "unigram":
            if getattr(self, "_unigram_counts", None) is None:
                from textvae.data import load_corpus

                corpus, _ = load_corpus(self.config.data, self.tokenizer, splits=("train",))
                log.warning("score: unigram background: counting the tokens of the training split")
                self._unigram_counts = token_counts(corpus["train"].ids, self.model.vocab_size)
            return unigram_nll(self.tokenize(sentences) if ids is None else ids, self._unigram_counts)
        path = Path(background).expanduser()
        if not path.exists():
            raise UserError(f"--background {background}: no such model directory or .gguf file (or use unigram)")
        config = path / "config.json"
        textvae_model = config.is_file() or (path / "model" / "config.json").is_file()
        if config.is_file():
            try:
                textvae_model = "format_version" in json.loads(config.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                textvae_model = True  # from_pretrained names what is wrong with it
        try:
            if textvae_model:
                other = TextVAE.from_pretrained(background, device=self.device)
                return other.score(sentences, iw_samples, seed)[0].double().cpu().numpy()
            if getattr(self, "_background_lm", (None,))[0] != background:
                from textvae.pretrained import load_hf

                module, tokenizer = load_hf(str(path), "--background", kind="decoder")
                self._background_lm = (background, module.to(self.device).eval(), tokenizer)
        except UserError as error:
            raise UserError(f"--background {background}: {str(error).removeprefix('config: --background: ')}") from None
        _, module, tokenizer = self._background_lm
        return causal_lm_nll(module, tokenizer, sentences)

    def ratio_stats(self, background: str, iw_samples: int | None = None) -> dict:
        """`score_stats` of `ratio` against `background` on the validation split, computed now
        (backgrounds are chosen at scoring time, so nothing is stored), with a line on stderr."""
        from textvae.anomaly import score_stats

        log.warning("score: computing the validation statistics of ratio against %s", background)
        ids, lines, scores = self._validation_pass(iw_samples)
        nll = scores.nll.double().cpu().numpy()
        return score_stats({"ratio": nll - self.background_nll(lines, background, iw_samples, ids=ids)})["ratio"]

    def _validation_pass(self, iw_samples: int | None = None):
        """(framed ids, text, evaluate.Scores) of the validation split of the data the model was
        trained on, scored with K = `iw_samples` (default: the stored K) once per K."""
        from textvae.data import load_corpus
        from textvae.evaluate import score_ids
        from textvae.tokenizer import decode_ids

        k = iw_samples or self.default_iw_samples
        if getattr(self, "_validation", (None,))[0] != k:
            corpus, _ = load_corpus(self.config.data, self.tokenizer, splits=("valid",))
            ids = list(corpus["valid"].ids)
            self._validation = (k, ids, list(decode_ids(self.tokenizer, ids)), score_ids(self, ids, k))
        return self._validation[1:]

    def complexity_dictionary(self) -> bytes:
        """zlib's preset dictionary for the `complexity` score: training sentences stored at export
        (`zlib_dict.txt`), else (a model made before it was stored) drawn now from the training
        split of the data it was trained on, with a line on stderr saying so."""
        if self.zlib_dict is None:
            from textvae.anomaly import dictionary_from_ids
            from textvae.data import load_corpus

            corpus, _ = load_corpus(self.config.data, self.tokenizer, splits=("train",))
            log.warning("score: this model stores no zlib dictionary; drawing one from its training split")
            self.zlib_dict = dictionary_from_ids(self.tokenizer, corpus["train"].ids)
        return self.zlib_dict

    @property
    def default_iw_samples(self) -> int:
        stored = self.extra.get("score_stats") or self.extra.get("score_quantiles") or {}
        return int(stored.get("iw_samples", 100))

    def score_stats(self, iw_samples: int | None = None) -> dict[str, dict]:
        """Mean, standard deviation and quantiles of every anomaly score on the validation split:
        stored at export by training, else (a model made before they were stored) computed now
        from the validation split of the data it was trained on, at `iw_samples` (default: the
        stored K, else 100), with a line on stderr saying so; cached on the model."""
        from textvae.anomaly import NEEDS_BACKGROUND, SCORES

        stored = self.extra.get("score_stats")
        if stored and set(SCORES) - set(NEEDS_BACKGROUND) <= set(stored["scores"]):
            return stored["scores"]
        if getattr(self, "_computed_stats", None) is None:
            from textvae.anomaly import validation_stats

            log.warning("score: this model stores no validation statistics; computing them from its validation "
                        "split at K = %d", iw_samples or self.default_iw_samples)
            _, lines, scores = self._validation_pass(iw_samples)
            self._computed_stats = validation_stats(scores.nll, scores.rec, scores.kl, scores.tokens, lines,
                                                    self.complexity_dictionary())
        return self._computed_stats

    def anomaly_threshold(self, percentile: float, by: str = "nll_per_token", background: str | None = None) -> float:
        """Score `by` (default: NLL per token) at `percentile` of the validation split."""
        from textvae.anomaly import NO_BACKGROUND, check_scores, percentile_of

        (name,) = check_scores(by)
        if not 0 <= percentile <= 100:
            raise UserError(f"--percentile must be in [0, 100], got {percentile}")
        if name == "ratio":
            if background is None:
                raise UserError(NO_BACKGROUND)
            return percentile_of({name: self.ratio_stats(background)}, name, percentile)
        quantiles = self.extra.get("score_quantiles")  # models made before score_stats store this one score
        if name == "nll_per_token" and quantiles and not self.extra.get("score_stats"):
            return percentile_of({name: {"quantiles": quantiles["nats_per_token"]}}, name, percentile)
        return percentile_of(self.score_stats(), name, percentile)

    def ood_metrics(self, in_domain: list[str], out_of_domain: list[str], by=None, iw_samples: int | None = None,
                    seed: int = 0, background: str | None = None) -> dict[str, dict[str, float]]:
        """AUROC, AUPR and FPR at 95% TPR (anomaly.detection_metrics; out-of-domain lines are the
        positives) of each score of `by` (default: all of anomaly.SCORES, `ratio` only with a
        `background`), and of `length`, the number of predicted tokens alone, as the confound check."""
        from textvae.anomaly import SCORES, check_scores, detection_metrics

        default = [name for name in SCORES if name != "ratio" or background is not None]
        names = check_scores(default if by is None else by)
        names += [] if "length" in names else ["length"]
        for side, lines in (("in-domain", in_domain), ("out-of-domain", out_of_domain)):
            if not lines:
                raise UserError(f"evaluate-ood: the {side} side has no lines")
        inside = self.score(in_domain, iw_samples, seed, by=names, background=background)
        outside = self.score(out_of_domain, iw_samples, seed, by=names, background=background)
        return {name: detection_metrics(inside[name].numpy(), outside[name].numpy()) for name in names}

    def compress(self, text: str, lanes: int = 64, parts: int = 2) -> bytes:
        """`text` (any str) as a lossless bits-back stream for this model (compress.py, docs/compression.md);
        `lanes` lines are coded in lockstep, the batch size of decompression, in each of up to
        `parts` independent parts that compression and decompression run in parallel threads
        (a part gets at least 4 x `lanes` lines)."""
        from textvae.compress import compress

        return compress(self, text, lanes, parts)

    def decompress(self, data: bytes) -> str:
        """The text of a `compress` stream; a `UserError` if it was made with another model or
        is damaged."""
        from textvae.compress import decompress

        return decompress(self, data)


EVAL_CAPS = {"max_sentences": 1, "prior_samples": 0, "bleu_sentences": 0, "interp_pairs": 0,
             "rec_beam": 0}  # key: least value


def evaluate_model(model: str = "runs/latest", split: str = "test", iw_samples: int | None = None, seed: int = 0,
                   precision: str = "32", device: str = "auto", **caps: int | None) -> dict:
    """`textvae evaluate`: the metrics of a saved model on a split of the data it was trained on,
    computed on `device` (see device.resolve_device). `caps` override the model's `eval` settings
    (`max_sentences`, `prior_samples` (0: no prior-sample metrics), `bleu_sentences` (0: all),
    `interp_pairs`, `rec_beam` (0: no beam-search reconstructions)); None keeps the stored value."""
    from textvae.data import load_corpus
    from textvae.evaluate import PRIOR_STRATEGY, evaluate, training_sentences

    if split not in ("train", "valid", "test"):
        raise UserError(f"--split must be train, valid or test, got {split!r}")
    caps = {key: value for key, value in caps.items() if value is not None}
    for key, value in caps.items():
        if key not in EVAL_CAPS:
            raise TypeError(f"evaluate_model() got an unexpected keyword argument {key!r}")
        if value < EVAL_CAPS[key]:
            raise UserError(f"--{key.replace('_', '-')} must be at least {EVAL_CAPS[key]}, got {value}")
    vae = TextVAE.from_pretrained(model, device=device, precision=precision)
    no_prior = caps.get("prior_samples") == 0
    if no_prior:
        del caps["prior_samples"]
    vae.config = dataclasses.replace(vae.config, eval=dataclasses.replace(vae.config.eval, **caps))
    data = vae.config.data
    # Evaluation uses full sentences: the training split is re-framed without its truncation.
    full = dataclasses.replace(data, max_length=10**9)
    corpus, _ = load_corpus(full, vae.tokenizer, splits=tuple(sorted({split} if no_prior else {split, "train"})))
    training_text = None if no_prior else training_sentences(vae, corpus["train"].ids)
    metrics, _ = evaluate(vae, corpus[split].ids, training_text, iw_samples, seed)
    metrics.update({"split": split, "iw_samples": iw_samples or vae.config.eval.iw_samples, "precision": precision,
                    "device": vae.device.type, "prior_strategy": PRIOR_STRATEGY})
    return metrics
