"""Models made before a change keep working after it: a model directory and a `last.ckpt` written
by textvae at commit 58c2a3b (tests/fixtures/pre_house: a 4-dimensional latent trained for 3 steps
on 100 PTB sentences, with what its CLI printed then) load, give byte-identical outputs from every
command, and keep their state_dict keys and config values."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, run_main
from textvae.api import TextVAE
from textvae.training import load_checkpoint_model

FIXTURE = REPO / "tests" / "fixtures" / "pre_house"
A, B = "the company said it expects a loss", "he said the market is n't going to fall"
COMMANDS = {
    "generate.txt": ["generate", "--n", "5", "--seed", "0"],
    "reconstruct.txt": ["reconstruct", str(FIXTURE / "input.txt")],
    "score.txt": ["score", str(FIXTURE / "input.txt"), "--iw-samples", "3"],
    "interpolate.txt": ["interpolate", A, B, "--steps", "3"],
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_prints_what_it_printed_before(name, tmp_path, single_thread):
    result = run_main([*COMMANDS[name], "--model", str(FIXTURE / "model")], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == (FIXTURE / name).read_text(encoding="utf-8")


def test_compression_streams_are_unchanged_both_ways(tmp_path, single_thread):
    vae = TextVAE.from_pretrained(FIXTURE / "model")
    text = (FIXTURE / "input.txt").read_text(encoding="utf-8")
    assert vae.decompress((FIXTURE / "input.tvz").read_bytes()) == text
    assert vae.compress(text) == (FIXTURE / "input.tvz").read_bytes()


def test_state_dict_keys_and_config_values_are_kept(tmp_path):
    vae = TextVAE.from_pretrained(FIXTURE / "model")
    stored = load_file(str(FIXTURE / "model" / "model.safetensors"))
    assert set(vae.model.state_dict()) - vae.model.tied_names() == set(stored)
    vae.save_pretrained(tmp_path / "again")
    old = json.loads((FIXTURE / "model" / "config.json").read_text())
    new = json.loads((tmp_path / "again" / "config.json").read_text())

    def flat(tree, prefix=""):
        out = {}
        for key, value in tree.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    old, new = flat(old), flat(new)
    assert {key: new.get(key) for key in old} == old  # every key and value kept; new keys only add defaults
    assert load_file(str(tmp_path / "again" / "model.safetensors")).keys() == stored.keys()


def test_a_checkpoint_written_before_loads_as_the_model_it_exported(single_thread):
    exported = TextVAE.from_pretrained(FIXTURE / "model")
    restored = load_checkpoint_model(FIXTURE / "last.ckpt", exported.tokenizer)
    for name, tensor in exported.model.state_dict().items():
        assert torch.equal(tensor, restored.model.state_dict()[name]), name
    assert restored.reconstruct([A, B]) == exported.reconstruct([A, B])
