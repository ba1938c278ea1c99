"""scripts/showcase.py: the side-by-side samples, reconstructions and paths it reports, and the
tables scripts/results_tables.py makes of them."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import REPO
from textvae.api import TextVAE


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


showcase = load_script("showcase")
results_tables = load_script("results_tables")


def test_test_sentences_are_evenly_spaced_among_those_of_the_right_length():
    lines = [" ".join(["w"] * n) + f" s{i}" for i, n in enumerate([1, 5, 9, 3, 7, 30, 4, 6, 2, 8])]
    # lengths with the marker word: 2 6 10 4 8 31 5 7 3 9; within [4, 9]: s1 s3 s4 s6 s7 s9
    chosen = showcase.chosen_sentences(lines, 3, (4, 9))
    assert [line.split()[-1] for line in chosen] == ["s1", "s4", "s7"]
    with pytest.raises(showcase.UserError, match="only 6 test lines have 4-9 words; 7 are needed"):
        showcase.chosen_sentences(lines, 7, (4, 9))


def test_each_model_gets_what_the_api_gives_on_the_same_sentences(gru_run, tiny_corpus, capsys):
    showcase.main(["--model", f"A={gru_run}", "--model", f"B={gru_run}", "--test", str(tiny_corpus["test"]),
                   "--samples", "3", "--sentences", "4", "--paths", "2", "--steps", "2", "--words", "3", "12",
                   "--seed", "5"])
    report = json.loads(capsys.readouterr().out)
    lines = tiny_corpus["test"].read_text().splitlines()
    assert report["sentences"] == showcase.chosen_sentences(lines, 4, (3, 12))
    assert report["pairs"] == [report["sentences"][:2], report["sentences"][2:]]
    vae = TextVAE.from_pretrained(gru_run)
    for name in ("A", "B"):
        model = report["models"][name]
        assert model["samples"] == vae.sample(3, seed=5, top_p=0.9)
        assert model["reconstructions"] == vae.reconstruct(report["sentences"])
        assert model["interpolations"][1] == vae.interpolate(*report["sentences"][2:], steps=2)
        assert [len(path) for path in model["interpolations"]] == [4, 4]  # both ends and 2 steps


def test_the_docs_tables_hold_every_model_column_and_escape_pipes():
    models = {name: {"samples": [f"{name} sample {i}" for i in range(2)], "reconstructions": ["a | b", ""],
                     "interpolations": [["x", "y", "z"]]} for name in ("GRU", "LM")}
    entry = {"top_p": 0.9, "seed": 0, "sentences": ["one | two", "three"], "pairs": [["one | two", "three"]],
             "models": models}
    text = results_tables.showcase({"ptb_showcase": entry})
    assert "| # | GRU | LM |" in text and "| 2 | GRU sample 1 | LM sample 1 |" in text
    assert r"| one \| two | a \| b | a \| b |" in text and "| three | *(empty)* | *(empty)* |" in text
    assert "| 0.50 | y | y |" in text and r"from *one \| two* to *three*" in text


@pytest.mark.parametrize("args, message", [
    ([], "--model NAME=DIR is required (once per model)"),
    (["--model", "runs/x"], "--model must be NAME=DIR, got 'runs/x'"),
    (["--model", "a=x", "--model", "a=y"], "--model: the name 'a' is given twice"),
    (["--model", "a=x", "--paths", "6"], "--paths must be between 0 and --sentences / 2 = 5, got 6"),
    (["--model", "a=x", "--samples", "0"], "--samples must be at least 1, got 0"),
])
def test_bad_arguments_are_one_line_and_exit_2(args, message, tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "showcase.py"), *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"showcase: {message}\n"
