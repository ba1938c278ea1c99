"""The benchmark scripts run and print the JSON fields that docs/performance.md and docs/results/
rely on, and their FLOP count agrees with torch's own count on the real model.

Tiny settings only: these check the scripts work and report what they claim, not how fast
anything is (timings never go into tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import CONFIGS, PTB_DIR, REPO, framed_batch, text_overrides
from textvae.anomaly import SCORES
from textvae.config import load_config
from textvae.model import VAE

from textvae.benchmarking import model_flops_per_token


def run_script(name: str, *args: str) -> list[dict]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


@pytest.mark.skipif(not (PTB_DIR / "ptb.train.txt").exists(), reason="PTB not linked (run scripts/get_data.sh)")
def test_bench_train_reports_throughput_mfu_and_the_bucketing_ratio():
    (out,) = run_script("bench_train.py", "--config", str(CONFIGS / "debug.yaml"), "--data.root", str(PTB_DIR),
                        "--steps", "3", "--warmup", "1", "--both")
    for key in ("tokens_per_s", "steps_per_s", "padding_share", "peak_rss_mb", "flops_per_token",
                "matmul_gflops_fp32", "matmul_gflops_bf16", "mfu", "mfu_bf16", "bucketed_speedup"):
        assert isinstance(out[key], float) and out[key] > 0, key
    assert out["unbucketed"]["padding_share"] > out["padding_share"]  # random batches pad more


@pytest.mark.skipif(not (PTB_DIR / "ptb.train.txt").exists(), reason="PTB not linked (run scripts/get_data.sh)")
def test_bench_data_reports_start_up_times_and_memory_per_size(tmp_path):
    (out,) = run_script("bench_data.py", "--sizes", "3000", "--work", str(tmp_path))
    assert set(out["sizes"]) == {"3000"}
    for key in ("first_batch_cold_s", "first_batch_warm_s", "peak_rss_cold_mb", "peak_rss_mb"):
        assert out["sizes"]["3000"][key] > 0, key
    corpus = tmp_path / "corpora" / "3000" / "train.txt"
    ptb = set((PTB_DIR / "ptb.train.txt").read_text().splitlines())
    lines = corpus.read_text().splitlines()
    assert len(lines) == 3000 and set(lines) <= ptb  # drawn from PTB train
    assert not (tmp_path / "3000").exists()  # runs and caches removed, corpora kept


@pytest.mark.slow
@pytest.mark.skipif(not (PTB_DIR / "ptb.train.txt").exists(), reason="PTB not linked (run scripts/get_data.sh)")
def test_bench_data_end_of_run_times_whole_runs_cold_and_warm_per_size(tmp_path):
    valid = tmp_path / "valid.txt"
    valid.write_text("".join((PTB_DIR / "ptb.valid.txt").read_text().splitlines(keepends=True)[:40]))
    (out,) = run_script("bench_data.py", "--end-of-run", "--sizes", "500", "1200", "--steps", "2",
                        "--valid", str(valid), "--work", str(tmp_path))
    assert out["bench"] == "data_end_of_run" and set(out["sizes"]) == {"500", "1200"}
    for entry in out["sizes"].values():
        assert all(entry[key] > 0 for key in ("cold_s", "warm_s", "cold_peak_rss_mb", "warm_peak_rss_mb"))
    peak = {size: max(e["cold_peak_rss_mb"], e["warm_peak_rss_mb"]) for size, e in out["sizes"].items()}
    assert out["rss_ratio_largest_to_smallest"] == pytest.approx(peak["1200"] / peak["500"], abs=0.01)
    lines = (tmp_path / "corpora" / "big1200.txt").read_text().splitlines()
    assert lines[:1000] == (PTB_DIR / "ptb.train.txt").read_text().splitlines()[:1000] and len(lines) == 1200


def test_bench_bits_reports_reconstructions_per_code_size(gru_run):
    from textvae.api import TextVAE
    from textvae.metrics import corpus_bleu

    (out,) = run_script("bench_bits.py", "--model", str(gru_run), "--sentences", "20", "--bits", "1", "16",
                        "--device", "cpu")
    float_row, one, sixteen = out["rows"]
    assert [row["bits"] for row in out["rows"]] == [None, 1, 16] and out["sentences"] == 20
    dim = out["latent_dim"]
    assert (float_row["bytes_per_sentence"], one["bytes_per_sentence"]) == (4 * dim, -(-dim // 8))
    assert sixteen["bytes_per_sentence"] == 2 * dim
    assert float_row["same_as_float"] == 1.0 and float_row["rmse"] == 0.0
    assert sixteen["rmse"] < 1e-3 < one["rmse"]
    # the float row is what reconstruct gives, scored independently
    vae = TextVAE.from_pretrained(gru_run, device="cpu")
    references = [" ".join(line.split()) for line in open(vae.config.data.test_file).read().splitlines()[:20]]
    assert float_row["rec_bleu"] == pytest.approx(corpus_bleu(vae.reconstruct(references), references), abs=1e-9)


def test_bench_generate_reports_each_decoder_strategy_and_precision(gru_run, transformer_run):
    rows = run_script("bench_generate.py", "--model", str(gru_run), "--n", "40", "--batch-size", "20",
                      "--max-length", "12")
    cases = {(row["strategy"], row["precision"]) for row in rows}
    assert cases == {(s, p) for s in ("greedy", "sample_top_p0.9") for p in ("32", "bf16")}
    assert all(row["decoder"] == "gru" and row["sentences_per_s"] > 0 for row in rows)
    rows = run_script("bench_generate.py", "--model", str(transformer_run), "--n", "40", "--batch-size", "20",
                      "--max-length", "12", "--precision", "32")
    fixed = [row for row in rows if "case" in row]
    assert len(fixed) == 1 and fixed[0]["identical_outputs"] is True and fixed[0]["cache_speedup"] > 0
    assert {row["cache"] for row in rows if "case" not in row} == {True, False}


def test_bench_eval_reports_seconds_and_mfu_and_says_when_it_extrapolates(gru_run):
    (out,) = run_script("bench_eval.py", "--model", str(gru_run), "--iw-samples", "4", "--limit", "10")
    assert out["sentences"] == 10 and out["extrapolated"] is True
    assert out["seconds"] > out["seconds_measured"] > 0  # scaled up to the whole test split
    assert out["mfu"] > 0 and out["nll"] > 0
    assert out["mfu_peak"] == pytest.approx(out["mfu"] * out["matmul_gflops_fp32"]
                                            / max(out["matmul_gflops_fp32"], out["matmul_gflops_bf16"]))
    assert out["precision"] == out["precision_requested"] == "32"
    assert isinstance(out["machine"]["cpu_bf16"], bool) and out["machine"]["cpu_capability"]


def test_bench_ood_trains_each_seed_and_summarises_every_score(tmp_path, tiny_corpus):
    lines = tiny_corpus["test"].read_text().splitlines()[:20]
    out_of_domain = tmp_path / "out.txt"
    out_of_domain.write_text("".join(f"{' '.join(reversed(line.split()))}\n" for line in lines))
    rows = run_script("bench_ood.py", "--config", str(CONFIGS / "debug.yaml"), "--seeds", "0", "1",
                      "--in-domain", str(tiny_corpus["test"]), "--out-of-domain", str(out_of_domain),
                      "--iw-samples", "2", "--work", str(tmp_path / "runs"), *text_overrides(tiny_corpus),
                      "--trainer.max_steps", "3", "--trainer.max_epochs", "1", "--eval.prior_samples", "4",
                      "--eval.bleu_sentences", "4", "--eval.interp_pairs", "2", "--eval.num_samples_txt", "0")
    seeds, last = rows[:-1], rows[-1]
    assert [row["seed"] for row in seeds] == [0, 1] and (tmp_path / "runs" / "seed1" / "model").is_dir()
    assert set(last["summary"]) == set(SCORES)  # ratio against the unigram background, length as the confound
    for name in SCORES:
        values = [row["scores"][name]["auroc"] for row in seeds]
        assert last["summary"][name]["auroc"]["mean"] == pytest.approx(sum(values) / 2)
        assert last["summary"][name]["auroc"]["std"] == pytest.approx(abs(values[0] - values[1]) / 2)


FLOP_CASES = [
    ("ptb", []),  # GRU 1024 with tied 512-wide embeddings (a projection in between)
    ("ptb_transformer", []),  # cross-attention memory and z added to the inputs
    ("ptb_transformer", ["--model.decoder.z_cross_attention", "false", "--model.decoder.tie_embeddings", "false"]),
    ("debug", ["--model.decoder.layers", "2", "--model.decoder.z_concat_input", "false"]),
]


@pytest.mark.parametrize("name, overrides", FLOP_CASES, ids=["gru", "transformer", "transformer-no-cross-untied",
                                                             "gru-2-layers-no-concat"])
def test_model_flops_per_token_matches_torchs_flop_counter(name, overrides, single_thread):
    """The formula the MFU figures rest on, against FLOPs counted by torch on the real model."""
    config = load_config(CONFIGS / f"{name}.yaml", overrides)
    vocab, words, batch = 10002, 20, 4
    torch.manual_seed(0)
    model = VAE(config.model, vocab).train()
    tokens = framed_batch([words] * batch, vocab=vocab)  # no padding: every position is predicted
    predicted = batch * (words + 1)
    # The math backend runs attention as visible matrix products (the CPU's fused kernel is not counted).
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as forward:
            loss = model(tokens)["rec"].sum()
        with FlopCounterMode(display=False) as backward:
            loss.backward()
    # Within 1%: the formula leaves out the per-sentence maps of z and counts causal attention at
    # half (torch counts the masked half too), a few tenths of a per cent here.
    forward_flops = forward.get_total_flops() / predicted
    training_flops = forward_flops + backward.get_total_flops() / predicted
    assert model_flops_per_token(config.model, vocab, words + 1, training=False) == pytest.approx(forward_flops,
                                                                                                  rel=0.01)
    assert model_flops_per_token(config.model, vocab, words + 1) == pytest.approx(training_flops, rel=0.01)


def test_plot_rate_draws_the_sweep_and_prints_its_table(tmp_path):
    def entry(name, kl, nll, bleu):
        metrics = {"nll": nll, "kl": kl, "mi": 1.0, "au": 32, "rec_bleu": bleu, "rec_exact": 0.0,
                   "interp_distinct": 2.0, "interp_step": 0.1}
        return {"name": name, "config": "configs/ptb.yaml", "valid": metrics, "test": metrics}

    results = tmp_path / "ptb.json"
    results.write_text(json.dumps([entry("ptb_rate_30", 30.0, 104.0, 20.0), entry("ptb_rate_5", 5.0, 100.5, 3.0),
                                   entry("ptb", 4.6, 100.4, 2.4)]))
    rows = run_script("plot_rate.py", "--results", str(results), "--out", str(tmp_path / "rate.png"))
    assert (tmp_path / "rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [row["name"] for row in rows] == ["ptb_rate_30", "ptb_rate_5", "ptb"]
    assert rows[0]["rec_bleu"] == 20.0 and rows[2]["kl"] == 4.6


def test_plot_rate_draws_the_rate_distortion_table(tmp_path):
    rows = run_script("plot_rate.py", "--rate-distortion", "--out", str(tmp_path / "rd.png"))
    assert (tmp_path / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by_label = {row["short"]: row for row in rows}
    # the published anchors, as Li et al. 2020 and 2019 give them
    assert (by_label["Optimus λ=0.5"]["kl"], by_label["Optimus λ=0.5"]["rec"]) == (15.72, 81.09)
    assert by_label["Li et al. 2019 LSTM"]["anchor"] and by_label["Li et al. 2019 LSTM"]["elbo"] == 102.41
    # textvae's rows carry the test figures of their results entries
    reference = next(e for e in json.loads((REPO / "docs/results/ptb.json").read_text()) if e["name"] == "ptb")
    assert not by_label["GRU ptb"]["anchor"]
    assert (by_label["GRU ptb"]["kl"], by_label["GRU ptb"]["rec"]) == (reference["test"]["kl"], reference["test"]["rec"])
