"""Anomaly scores (textvae score --by, TextVAE.score(by=...)), their validation statistics, and the
detection metrics of textvae evaluate-ood, against independent computations."""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

from conftest import REPO, build_tiny_lm, run_main
from textvae.anomaly import SCORES, detection_metrics
from textvae.api import TextVAE
from textvae.errors import UserError
from textvae.losses import gaussian_kl
from textvae.metrics import iw_nll
from textvae.pretrained import load_hf
from textvae.tokenizer import pad_batch

SENTENCES = ["the cat saw the ball", "a small bird found a red car yesterday", "the teacher called her friend again"]


# ----------------------------------------------------------------------------- detection metrics
def brute_force(negatives, positives) -> dict[str, float]:
    """AUROC over all pairs, average precision and FPR@95 over every distinct threshold, by loops."""
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p in positives for n in negatives]
    thresholds = sorted(set(negatives) | set(positives), reverse=True)
    aupr, previous_recall, fpr95 = 0.0, 0.0, None
    for t in thresholds:
        true_positives = sum(p >= t for p in positives)
        flagged = true_positives + sum(n >= t for n in negatives)
        recall = true_positives / len(positives)
        aupr += (recall - previous_recall) * true_positives / flagged
        previous_recall = recall
        if fpr95 is None and recall >= 0.95:
            fpr95 = sum(n >= t for n in negatives) / len(negatives)
    return {"auroc": sum(pairs) / len(pairs), "aupr": aupr, "fpr95": fpr95}


@pytest.mark.parametrize("seed", range(6))
def test_detection_metrics_equal_a_brute_force_count_ties_included(seed):
    rng = random.Random(seed)
    negatives = [rng.choice(range(8)) for _ in range(rng.randint(1, 30))]  # few values: many ties
    positives = [rng.choice(range(3, 12)) for _ in range(rng.randint(1, 30))]
    expected = brute_force(negatives, positives)
    got = detection_metrics(np.array(negatives, float), np.array(positives, float))
    assert got == pytest.approx(expected, abs=1e-12)


def test_detection_metrics_at_the_extremes():
    assert detection_metrics([0, 1, 2], [3, 4]) == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
    # all in-domain lines above: precision 1/3, 2/4, 3/5 as recall reaches 1/3, 2/3, 1
    assert detection_metrics([3, 4], [0, 1, 2]) == pytest.approx({"auroc": 0.0, "aupr": (1 / 3 + 1 / 2 + 3 / 5) / 3,
                                                                  "fpr95": 1.0})
    assert detection_metrics([5, 5], [5, 5, 5]) == pytest.approx({"auroc": 0.5, "aupr": 0.6, "fpr95": 1.0})
    with pytest.raises(UserError, match="at least one line"):
        detection_metrics([], [1.0])


# ----------------------------------------------------------------------------------------- scores
@pytest.fixture(scope="module")
def vae(gru_run) -> TextVAE:
    return TextVAE.from_pretrained(gru_run, device="cpu")


def test_each_score_equals_a_direct_computation(vae, tiny_corpus):
    scores = vae.score(SENTENCES, iw_samples=4, seed=3, by=list(SCORES), background="unigram")
    assert set(scores) == set(SCORES) and all(v.dtype == torch.float64 for v in scores.values())
    nll, tokens = vae.score(SENTENCES, iw_samples=4, seed=3)
    torch.testing.assert_close(scores["nll"], nll.double())  # the same pass, the same codes
    torch.testing.assert_close(scores["length"], tokens.double())
    assert tokens.tolist() == [len(s.split()) + 1 for s in SENTENCES]
    torch.testing.assert_close(scores["nll_per_token"], nll.double() / tokens)
    for row, sentence in enumerate(SENTENCES):  # one sentence at a time: the sampler's draws are its own
        batch = pad_batch(vae.tokenize([sentence]))
        with torch.no_grad():
            mean, logvar = vae.model.encode(batch)
            estimate = iw_nll(vae.model, batch, 4, generator=torch.Generator().manual_seed(3), posterior=(mean, logvar))
        (single,) = [vae.score([sentence], iw_samples=4, seed=3, by=["nll", "rate", "rec"])]
        assert single["nll"].item() == pytest.approx(estimate.nll.item(), rel=1e-6)
        assert single["rec"].item() == pytest.approx(estimate.rec.item(), rel=1e-6)
        assert scores["rate"][row].item() == pytest.approx(gaussian_kl(mean, logvar).sum().item(), rel=1e-5)
    stats = vae.extra["score_stats"]["scores"]["nll_per_token"]
    typical = (scores["nll_per_token"] - stats["mean"]).abs() / stats["std"]
    torch.testing.assert_close(scores["typicality"], typical)
    deflated = []
    for sentence in SENTENCES:
        compressor = zlib.compressobj(9, zdict=vae.zlib_dict)
        deflated.append(8 * len(compressor.compress(sentence.encode()) + compressor.flush()))
    torch.testing.assert_close(scores["complexity"], nll.double() / math.log(2) - torch.tensor(deflated).double())
    counts = np.bincount([i for ids in vae.tokenize(tiny_corpus["train"].read_text().splitlines()) for i in ids],
                         minlength=vae.model.vocab_size)
    unigram = [-sum(math.log((counts[i] + 1) / (counts.sum() + len(counts))) for i in ids[1:])
               for ids in vae.tokenize(SENTENCES)]
    torch.testing.assert_close(scores["ratio"], nll.double() - torch.tensor(unigram, dtype=torch.float64))


def test_ratio_against_a_textvae_model_is_the_difference_of_their_nlls(vae, gru_run, transformer_run, tmp_path):
    itself = vae.score(SENTENCES, iw_samples=3, by="ratio", background=str(gru_run))["ratio"]
    assert itself.tolist() == [0.0] * len(SENTENCES)  # the same model, codes and batches
    other = TextVAE.from_pretrained(transformer_run).score(SENTENCES, iw_samples=3)[0]
    ratio = vae.score(SENTENCES, iw_samples=3, by="ratio", background=str(transformer_run))["ratio"]
    torch.testing.assert_close(ratio, vae.score(SENTENCES, iw_samples=3)[0].double() - other.double())
    result = run_main(["score", "--by", "ratio", "--background", "unigram", "--percentile", "50", "--iw-samples", "2",
                       "--model", str(gru_run)], cwd=tmp_path, input="\n".join(SENTENCES) + "\n")
    assert result.returncode == 0, result.stderr
    assert "computing the validation statistics of ratio against unigram" in result.stderr
    assert [line.split("\t")[3] for line in result.stdout.splitlines()] != ["-"] * 3


def test_ratio_against_a_causal_lm_scores_each_line_with_its_own_tokens(vae, tmp_path):
    lm_dir = build_tiny_lm("gpt2", tmp_path / "gpt2")
    module, tokenizer = load_hf(str(lm_dir), "test", kind="decoder")
    expected = []
    for sentence in SENTENCES:  # one line at a time: no padding
        ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(sentence, add_special_tokens=False)["input_ids"],
                             tokenizer.eos_token_id]])
        with torch.no_grad():
            log_probs = torch.log_softmax(module(input_ids=ids).logits[0, :-1].float(), -1)
        expected.append(-log_probs.gather(-1, ids[0, 1:, None]).sum().item())
    scores = vae.score(SENTENCES, iw_samples=2, by=["nll", "ratio"], background=str(lm_dir))
    torch.testing.assert_close(scores["ratio"], scores["nll"] - torch.tensor(expected, dtype=torch.float64),
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize("background, message", [
    (None, "--by ratio needs --background MODEL"),
    ("missing_model", "--background missing_model: "),
    ("encoder_only", "--background encoder_only: 'encoder_only' (bert) is not a decoder-only causal LM"),
])
def test_a_bad_background_is_one_line_and_exit_2(background, message, gru_run, tmp_path):
    (tmp_path / "encoder_only").mkdir()
    (tmp_path / "encoder_only" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    extra = [] if background is None else ["--background", background]
    for command in (["score", "--by", "ratio"], ["evaluate-ood", "--in-domain", "in.txt", "--out-of-domain", "in.txt",
                                                 "--by", "ratio"]):
        (tmp_path / "in.txt").write_text("the cat\n")
        result = run_main([*command, *extra, "--model", str(gru_run)], cwd=tmp_path, input="the cat\n")
        assert result.returncode == 2 and result.stdout == "", result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"textvae: error: {message}")


def test_the_zlib_dictionary_is_training_text_and_survives_a_round_trip(vae, tiny_corpus, tmp_path):
    vae_dir = vae.save_pretrained(tmp_path / "copy")
    text = (vae_dir / "zlib_dict.txt").read_bytes()
    assert text == vae.zlib_dict and 1000 < len(text) <= 32768
    training = set(tiny_corpus["train"].read_text().splitlines())
    assert set(text.decode().splitlines()[1:]) <= training  # whole sentences (the first may be cut)
    assert TextVAE.from_pretrained(vae_dir).zlib_dict == text


def test_training_stores_every_scores_validation_statistics(vae, gru_run):
    stored = vae.extra["score_stats"]
    assert stored["split"] == "valid" and stored["iw_samples"] == vae.config.eval.iw_samples
    assert set(stored["scores"]) == set(SCORES) - {"ratio"}  # every score that needs no background
    for name, stat in stored["scores"].items():
        quantiles = stat["quantiles"]
        assert len(quantiles) == 1001 and quantiles == sorted(quantiles), name
        assert quantiles[0] <= stat["mean"] <= quantiles[-1]
    # the old per-token quantiles stay, and agree
    assert vae.extra["score_quantiles"]["nats_per_token"] == pytest.approx(
        stored["scores"]["nll_per_token"]["quantiles"], abs=1e-4)
    assert vae.anomaly_threshold(95, by="rate") == pytest.approx(np.interp(
        950, np.arange(1001), stored["scores"]["rate"]["quantiles"]))


def without_stats(gru_run, tmp_path, data_missing: bool = False):
    model = tmp_path / "model"
    shutil.copytree(gru_run / "model", model)
    meta = json.loads((model / "config.json").read_text())
    del meta["score_stats"]
    (model / "zlib_dict.txt").unlink()
    if data_missing:
        meta["config"]["data"]["valid_file"] = str(tmp_path / "gone.txt")
    (model / "config.json").write_text(json.dumps(meta))
    return model


def test_a_model_made_before_the_statistics_computes_them_from_its_validation_split(vae, gru_run, tmp_path):
    old = without_stats(gru_run, tmp_path)
    result = run_main(["score", "--by", "typicality", "rate", "--percentile", "90", "--format", "jsonl",
                       "--model", str(old)], cwd=tmp_path, input="\n".join(SENTENCES) + "\n")
    assert result.returncode == 0, result.stderr
    assert "this model stores no validation statistics; computing them from its validation split" in result.stderr
    assert "this model stores no zlib dictionary; drawing one from its training split" in result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [sorted(row) for row in rows] == [["anomaly", "rate", "text", "tokens", "typicality"]] * 3
    # the same scoring pass as training's (seed 0, K of the stored quantiles): the same statistics
    computed = TextVAE.from_pretrained(old, device="cpu").score_stats()
    for name, stat in vae.extra["score_stats"]["scores"].items():
        assert computed[name]["mean"] == pytest.approx(stat["mean"], rel=1e-4), name
    threshold = vae.anomaly_threshold(90, by="typicality")
    assert [row["anomaly"] for row in rows] == [row["typicality"] > threshold for row in rows]


def test_statistics_without_the_data_are_one_line_and_exit_2(gru_run, tmp_path):
    old = without_stats(gru_run, tmp_path, data_missing=True)
    result = run_main(["score", "--by", "typicality", "--model", str(old)], cwd=tmp_path, input="the cat\n")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines()[-1].startswith("textvae: error: ") and "gone.txt" in result.stderr
    fine = run_main(["score", "--by", "rate", "--model", str(old)], cwd=tmp_path, input="the cat\n")
    assert fine.returncode == 0 and fine.stderr == "", fine.stderr  # rate needs no statistics


def test_score_by_puts_the_score_in_the_first_column_and_the_rest_stays(gru_run, tmp_path):
    lines = "\n".join(SENTENCES) + "\n"
    plain = run_main(["score", "--iw-samples", "3", "--model", str(gru_run)], cwd=tmp_path, input=lines)
    by = run_main(["score", "--iw-samples", "3", "--by", "rate", "--model", str(gru_run)], cwd=tmp_path, input=lines)
    assert plain.returncode == by.returncode == 0
    rate = TextVAE.from_pretrained(gru_run).score(SENTENCES, iw_samples=3, by="rate")["rate"]
    for old, new, value in zip(plain.stdout.splitlines(), by.stdout.splitlines(), rate.tolist()):
        assert new.split("\t")[1:] == old.split("\t")[1:]
        assert new.split("\t")[0] == f"{value:.3f}"


# -------------------------------------------------------------------------------- evaluate-ood
def test_evaluate_ood_reports_every_score_and_length(gru_run, tiny_corpus, tmp_path):
    inside = tiny_corpus["test"].read_text().splitlines()[:20]
    rng = random.Random(0)
    shuffled = [" ".join(rng.sample(line.split(), len(line.split()))) for line in inside]
    (tmp_path / "in.txt").write_text("\n".join(inside) + "\n")
    (tmp_path / "out.txt").write_text("\n".join(shuffled) + "\n")
    result = run_main(["evaluate-ood", "--in-domain", "in.txt", "--out-of-domain", "out.txt", "--iw-samples", "2",
                       "--json", "--model", str(gru_run)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == set(SCORES) - {"ratio"}  # ratio needs a background
    assert all(set(row) == {"auroc", "aupr", "fpr95"} and all(0 <= v <= 1 for v in row.values())
               for row in report.values())
    assert report["length"]["auroc"] == 0.5  # shuffling keeps every length
    direct = TextVAE.from_pretrained(gru_run).ood_metrics(inside, shuffled, by=["nll"], iw_samples=2)
    assert set(direct) == {"nll", "length"} and direct["nll"] == pytest.approx(report["nll"])
    table = run_main(["evaluate-ood", "--in-domain", "in.txt", "--out-of-domain", "out.txt", "--iw-samples", "2",
                      "--by", "rate", "--model", str(gru_run)], cwd=tmp_path)
    assert table.returncode == 0 and [line.split()[0] for line in table.stdout.splitlines()] == [
        "score", "rate", "length"]


@pytest.mark.parametrize("args, message", [
    (["--in-domain", "missing.txt", "--out-of-domain", "out.txt"], "--in-domain: file not found: missing.txt"),
    (["--in-domain", "in.txt", "--out-of-domain", "empty.txt"], "--out-of-domain: empty.txt has no non-empty lines"),
    (["--in-domain", "in.txt", "--out-of-domain", "out.txt", "--by", "ratio2"], "--by must be one of nll, "),
])
def test_evaluate_ood_bad_inputs_are_one_line_and_exit_2(args, message, gru_run, tmp_path):
    (tmp_path / "in.txt").write_text("the cat saw the ball\n")
    (tmp_path / "out.txt").write_text("ball the saw cat the\n")
    (tmp_path / "empty.txt").write_text("\n \n")
    result = run_main(["evaluate-ood", *args, "--model", str(gru_run)], cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"textvae: error: {message}")


def test_score_refuses_an_unknown_score(gru_run, tmp_path):
    result = run_main(["score", "--by", "nll", "surprise", "--model", str(gru_run)], cwd=tmp_path, input="the cat\n")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["textvae: error: --by must be one of nll, nll_per_token, rate, rec, "
                                          "typicality, complexity, ratio, length, got 'surprise'"]


# ------------------------------------------------------------------------------------ CLINC150
def run_clinc150_text(*args: str):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "clinc150_text.py"), *args], capture_output=True,
                          text=True, timeout=60)


def test_the_clinc150_reader_writes_each_split_as_text(tmp_path):
    data = {"train": [["what is my  balance", "balance"], ["book a table", "restaurant_reservation"]],
            "val": [["how old are you", "how_old_are_you"]], "test": [["play some jazz", "play_music"]],
            "oos_train": [["how tall is everest", "oos"]], "oos_val": [["who wrote hamlet", "oos"]],
            "oos_test": [["what is the capital of peru", "oos"], ["  ", "oos"]]}
    (tmp_path / "data_full.json").write_text(json.dumps(data))
    result = run_clinc150_text(str(tmp_path / "data_full.json"), str(tmp_path / "out"))
    assert result.returncode == 0 and result.stdout.strip() == str(tmp_path / "out"), result.stderr
    files = {path.name: path.read_text() for path in (tmp_path / "out").iterdir()}
    assert files == {"train.txt": "what is my balance\nbook a table\n", "valid.txt": "how old are you\n",
                     "test.txt": "play some jazz\n", "oos_train.txt": "how tall is everest\n",
                     "oos_valid.txt": "who wrote hamlet\n", "oos_test.txt": "what is the capital of peru\n"}


def test_a_json_of_another_shape_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "other.json").write_text(json.dumps({"train": [], "val": []}))
    result = run_clinc150_text(str(tmp_path / "other.json"), str(tmp_path / "out"))
    assert result.returncode == 2 and not (tmp_path / "out").exists()
    assert result.stderr.splitlines() == [f"clinc150_text: {tmp_path / 'other.json'} is not CLINC150's JSON: it needs "
                                          "the keys train, val, test, oos_train, oos_val, oos_test"]
