"""scripts/latent_dims.py and TextVAE.posterior: each latent dimension's KL and activity, against
the evaluation's own per-sentence figures."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from conftest import REPO
from textvae.api import TextVAE
from textvae.evaluate import score_ids
from textvae.metrics import active_units
from textvae.tokenizer import length_batches

spec = importlib.util.spec_from_file_location("latent_dims", REPO / "scripts" / "latent_dims.py")
latent_dims = importlib.util.module_from_spec(spec)
spec.loader.exec_module(latent_dims)


def test_posterior_is_the_encoders_output_in_input_order(gru_run, tiny_corpus):
    vae = TextVAE.from_pretrained(gru_run)
    lines = tiny_corpus["valid"].read_text().splitlines()[:30]
    mean, logvar = vae.posterior(lines)
    torch.testing.assert_close(mean, vae.encode(lines), rtol=0, atol=0)
    with torch.no_grad():
        alone_mean, alone_logvar = vae.model.encode(next(length_batches(vae.tokenize(lines[7:8]), 1))[1])
    torch.testing.assert_close(mean[7], alone_mean[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logvar[7], alone_logvar[0], rtol=1e-5, atol=1e-5)


def test_the_dimensions_add_up_to_the_evaluations_kl_and_active_units(gru_run, tiny_corpus, capsys):
    latent_dims.main(["--model", str(gru_run), "--text", str(tiny_corpus["valid"]), "--max-lines", "40"])
    report = json.loads(capsys.readouterr().out)
    vae = TextVAE.from_pretrained(gru_run)
    lines = tiny_corpus["valid"].read_text().splitlines()[:40]
    scores = score_ids(vae, vae.tokenize(lines), iw_samples=1)
    assert report["sentences"] == 40 and len(report["dims"]) == vae.latent_dim
    assert report["kl"] == pytest.approx(scores.kl.mean().item(), rel=1e-4)
    assert sum(d["kl"] for d in report["dims"]) == pytest.approx(report["kl"])
    assert report["au"] == active_units(scores.mean) == sum(d["active"] for d in report["dims"])
    kls = [d["kl"] for d in report["dims"]]
    assert kls == sorted(kls, reverse=True) and sorted(d["dim"] for d in report["dims"]) == list(range(vae.latent_dim))
    variances = scores.mean.double().var(0)
    for d in report["dims"]:
        assert d["mean_variance"] == pytest.approx(variances[d["dim"]].item(), rel=1e-4)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(latent_dims.UserError, match="--max-lines must be at least 1, got 0"):
        latent_dims.main(["--model", "m", "--max-lines", "0"])
    with pytest.raises(latent_dims.UserError, match="file not found"):
        latent_dims.main(["--model", "m", "--text", str(tmp_path / "none.txt")])
