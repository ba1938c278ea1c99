"""scripts/ptb_ood.py: the length-matched out-of-domain pairs it writes, the length-bias measure,
and its report on a tiny model."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter

import numpy as np
import pytest

from conftest import REPO, synthetic_sentences
from textvae.anomaly import SCORES, detection_metrics
from textvae.api import TextVAE

spec = importlib.util.spec_from_file_location("ptb_ood", REPO / "scripts" / "ptb_ood.py")
ptb_ood = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ptb_ood)


def test_wikipedia_text_is_put_into_ptb_conventions():
    assert (ptb_ood.ptb_conventions("The 1960s saw 1,000 men , 3.5% of 12:30 ! $ 5 & Co # -- % X-ray")
            == "the 1960s saw N men N N of N $ N & co # N x-ray")
    assert ptb_ood.ptb_conventions(" -- ... ") == ""


def test_length_matched_sides_have_the_same_number_of_lines_of_each_word_count():
    first = synthetic_sentences(300, 0)
    second = [" ".join(line.split()[:cut]) for cut, line in zip([5, 6, 7] * 70, synthetic_sentences(200, 1))]
    second += ["one two"] * 5  # a length the first side lacks
    kept_first, kept_second = ptb_ood.length_matched(first, second, seed=0)
    counts = [Counter(len(line.split()) for line in side) for side in (kept_first, kept_second)]
    assert counts[0] == counts[1] and set(counts[0]) == {5, 6, 7}
    available = [Counter(len(line.split()) for line in side) for side in (first, second)]
    for length, count in counts[0].items():
        assert count == min(available[0][length], available[1][length])
    assert Counter(kept_first) <= Counter(first) and Counter(kept_second) <= Counter(second)
    assert ptb_ood.length_matched(first, second, seed=0) == (kept_first, kept_second)


def test_shuffled_lines_are_other_orders_of_the_same_words():
    lines = ["a b c d", "x", "y y y", "the cat sat on the mat"]
    kept, changed = ptb_ood.shuffled(lines, seed=3)
    assert kept == ["a b c d", "the cat sat on the mat"]  # one word, or all alike: no other order exists
    for original, other in zip(kept, changed):
        assert sorted(original.split()) == sorted(other.split()) and original != other


def test_a_fifth_of_the_words_are_replaced_by_vocabulary_words():
    lines = [" ".join(f"w{i}" for i in range(n)) for n in (1, 2, 5, 8, 21)]
    vocabulary = [f"v{i}" for i in range(50)]
    kept, changed = ptb_ood.replaced(lines, vocabulary, seed=0)
    assert kept == lines
    for original, other in zip(lines, changed):
        before, after = original.split(), other.split()
        differing = [j for j in range(len(before)) if before[j] != after[j]]
        assert len(after) == len(before) and len(differing) == max(1, round(0.2 * len(before)))
        assert all(after[j] in vocabulary for j in differing)


def test_at_most_keeps_pairs_together():
    sets = {"wiki": ptb_ood.length_matched(synthetic_sentences(200, 0), synthetic_sentences(200, 1), seed=0),
            "shuffled": ptb_ood.shuffled(synthetic_sentences(50, 2), seed=0)}
    kept = ptb_ood.at_most(sets, 20, seed=1)
    for name, (inside, outside) in kept.items():
        assert len(inside) == len(outside) == 20
        for a, b in zip(inside, outside):
            assert len(a.split()) == len(b.split())
            assert name != "shuffled" or sorted(a.split()) == sorted(b.split())
    assert ptb_ood.at_most(sets, None, seed=1) is sets


def test_flag_rates_by_length_on_a_hand_computed_case():
    lengths = np.array([5, 1, 2, 9, 3, 8, 7, 4])  # quarters by length: [1, 2], ..., [8, 9]
    scores = np.array([0.0, 3.0, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0])
    rates = ptb_ood.flag_rates_by_length(scores, lengths, threshold=0.5)
    assert rates == {"threshold": 0.5, "shortest": 1.0, "longest": 0.5, "ratio": 2.0}
    assert ptb_ood.flag_rates_by_length(np.zeros(8), lengths, 0.5)["ratio"] == 1.0
    assert ptb_ood.flag_rates_by_length(lengths * 1.0, lengths, 2.5)["ratio"] is None  # shortest: none flagged


@pytest.fixture(scope="module")
def ptb_like(tmp_path_factory, tiny_corpus):
    """A PTB-shaped folder holding the tiny corpus the gru_run model was trained on, and a
    'Wikipedia' file of other text."""
    root = tmp_path_factory.mktemp("ptb_like")
    for split in ("train", "valid", "test"):
        (root / f"ptb.{split}.txt").write_text(tiny_corpus[split].read_text())
    (root / "wiki.txt").write_text("The 3 Dogs ran , quickly .\nA 1990s film about 12 ships\n"
                                   + "\n".join(" ".join(reversed(line.split())) for line in synthetic_sentences(80, 7)))
    return root


def test_the_report_holds_every_score_on_every_pair(gru_run, ptb_like, tmp_path, capsys):
    ptb_ood.main(["--model", str(gru_run), "--ptb", str(ptb_like), "--wiki", str(ptb_like / "wiki.txt"),
                  "--sets", str(tmp_path / "sets"), "--iw-samples", "2"])
    report = json.loads(capsys.readouterr().out)
    assert set(report["sets"]) == {"wiki", "shuffled", "random20", "valid"}
    for name, entry in report["sets"].items():
        inside = (tmp_path / "sets" / f"{name}.in.txt").read_text().splitlines()
        outside = (tmp_path / "sets" / f"{name}.out.txt").read_text().splitlines()
        assert entry["lines"] == [len(inside), len(outside)]
        assert set(entry["scores"]) == set(SCORES)
        # length alone: the word counts (+ <eos>) of the files themselves
        expected = detection_metrics([len(line.split()) + 1 for line in inside],
                                     [len(line.split()) + 1 for line in outside])
        assert entry["scores"]["length"] == pytest.approx(expected)
    assert report["sets"]["shuffled"]["scores"]["length"]["auroc"] == 0.5  # same lines, other order
    assert set(report["length_bias"]) == set(SCORES) - {"length"}
    vae = TextVAE.from_pretrained(gru_run)
    assert report["length_bias"]["rate"]["threshold"] == pytest.approx(vae.anomaly_threshold(95, by="rate"))


@pytest.mark.parametrize("args, message", [([], "--model is required"),
                                           (["--model", "m", "--max-lines", "0"], "--max-lines must be at least 1")])
def test_bad_arguments_are_refused(args, message, tmp_path):
    with pytest.raises(ptb_ood.UserError, match=message):
        ptb_ood.main(["--sets", str(tmp_path), *args])
