"""Config loading: every shipped YAML, defaults <- YAML <- flags precedence, and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import CONFIGS, run_main
from textvae.config import Config, dump_config, load_config
from textvae.errors import UserError

SHIPPED_CONFIGS = sorted(CONFIGS.glob("*.yaml"))


def write_yaml(directory: Path, text: str, name: str = "experiment.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_the_required_configs_ship():
    assert {"ptb.yaml", "ptb_transformer.yaml", "debug.yaml"} <= {path.name for path in SHIPPED_CONFIGS}


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda path: path.name)
def test_every_shipped_config_parses_and_names_its_command(path):
    config = load_config(path)
    assert isinstance(config, Config)
    assert config.output_dir == f"runs/{path.stem}"
    first_line = path.read_text().splitlines()[0]
    assert first_line == f"# textvae train --config configs/{path.name}"


def test_shipped_configs_choose_the_documented_decoders():
    assert load_config(CONFIGS / "ptb.yaml").model.decoder.type == "gru"
    assert load_config(CONFIGS / "ptb_transformer.yaml").model.decoder.type == "transformer"
    assert load_config(CONFIGS / "debug.yaml").data.limit is not None


def test_yaml_overrides_defaults_and_flags_override_yaml(tmp_path):
    path = write_yaml(tmp_path, "model:\n  latent_dim: 16\n  encoder:\n    layers: 3\ndata:\n  batch_size: 8\n")
    defaults = Config()

    from_yaml = load_config(path)
    assert from_yaml.model.latent_dim == 16
    assert from_yaml.data.batch_size == 8
    assert from_yaml.model.encoder.layers == 3
    assert from_yaml.model.encoder.width == defaults.model.encoder.width
    assert from_yaml.model.word_dropout == defaults.model.word_dropout

    flagged = load_config(path, ["--model.latent_dim", "32", "--model.encoder.width", "64"])
    assert flagged.model.latent_dim == 32
    assert flagged.model.encoder.width == 64
    assert flagged.model.encoder.layers == 3
    assert flagged.data.batch_size == 8


def test_flags_accept_the_equals_form_and_the_last_flag_wins(tmp_path):
    path = write_yaml(tmp_path, "trainer:\n  max_epochs: 7\n")
    config = load_config(path, ["--trainer.max_epochs=3", "--model.decoder.type=transformer",
                                "--model.latent_dim", "4", "--model.latent_dim=5"])
    assert config.trainer.max_epochs == 3
    assert config.model.decoder.type == "transformer"
    assert config.model.latent_dim == 5


def test_flag_values_are_parsed_as_yaml():
    config = load_config(CONFIGS / "debug.yaml", [
        "--data.limit", "null", "--trainer.devices", "[0, 1]", "--model.decoder.tie_embeddings", "false",
        "--optim.lr", "1e-4", "--kl.max_beta", "1", "--output_dir", "runs/x"])
    assert config.data.limit is None
    assert config.trainer.devices == [0, 1]
    assert config.model.decoder.tie_embeddings is False
    assert config.optim.lr == pytest.approx(1e-4)
    assert isinstance(config.kl.max_beta, float)
    assert config.output_dir == "runs/x"


def test_exponent_without_a_dot_in_yaml_is_a_float(tmp_path):
    assert load_config(write_yaml(tmp_path, "optim:\n  lr: 3e-4\n")).optim.lr == pytest.approx(3e-4)


def test_dump_config_round_trips():
    config = load_config(CONFIGS / "ptb_transformer.yaml", ["--seed", "5"])
    assert yaml.safe_load(dump_config(config)) == config.to_dict()


def test_print_config_prints_the_merged_yaml_and_exits(tmp_path):
    result = run_main(["train", "--config", str(CONFIGS / "debug.yaml"), "--print_config",
                      "--model.latent_dim", "32", "--trainer.max_epochs=3"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    expected = load_config(CONFIGS / "debug.yaml", ["--model.latent_dim", "32", "--trainer.max_epochs=3"])
    assert printed == expected.to_dict()
    assert printed["model"]["latent_dim"] == 32
    assert printed["trainer"]["max_epochs"] == 3
    assert printed["model"]["encoder"]["width"] == 32
    assert not (tmp_path / "runs").exists()


def test_missing_config_file_is_named(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(UserError, match="not found") as error:
        load_config(missing)
    assert str(missing) in str(error.value)


@pytest.mark.parametrize("text, line", [
    ("seed: 0\nmodel:\n  latent_dim: 8\n   word_dropout: 0.2\n", 4),
    ("seed: 0\ndata: {batch_size: 3\n\n", 4),
    ("model:\n  latent_dim: 8\n\tword_dropout: 0.1\n", 3),
], ids=["bad-indent", "unclosed-brace", "tab"])
def test_yaml_syntax_error_names_file_and_line(tmp_path, text, line):
    path = write_yaml(tmp_path, text)
    with pytest.raises(UserError) as error:
        load_config(path)
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message
    assert f"line {line}" in message


def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path):
    with pytest.raises(UserError, match="mapping"):
        load_config(write_yaml(tmp_path, "- 1\n- 2\n"))


@pytest.mark.parametrize("flag, suggestion", [
    ("--model.latnt_dim", "model.latent_dim"),
    ("--model.decoder.typ", "model.decoder.type"),
    ("--data.batchsize", "data.batch_size"),
    ("--kl.schedul", "kl.schedule"),
    ("--trainer.max_epoch", "trainer.max_epochs"),
])
def test_unknown_key_suggests_the_nearest_valid_key(flag, suggestion):
    with pytest.raises(UserError) as error:
        load_config(CONFIGS / "debug.yaml", [flag, "1"])
    message = str(error.value)
    assert f"unknown key {flag[2:]}" in message
    assert f"did you mean {suggestion}?" in message


def test_unknown_key_in_yaml_is_rejected(tmp_path):
    with pytest.raises(UserError, match=r"unknown key model\.decoder\.hiden .*model\.decoder\.hidden"):
        load_config(write_yaml(tmp_path, "model:\n  decoder:\n    hiden: 64\n"))


def test_unknown_top_level_key_lists_the_sections():
    with pytest.raises(UserError, match=r"unknown key zzz \(valid keys: seed, output_dir, data, model"):
        load_config(None, ["--zzz", "1"])


@pytest.mark.parametrize("flags, key", [
    (["--model.latent_dim", "abc"], "model.latent_dim"),
    (["--model.latent_dim", "32.5"], "model.latent_dim"),
    (["--data.batch_size", "true"], "data.batch_size"),
    (["--model.word_dropout", "high"], "model.word_dropout"),
    (["--model.decoder.tie_embeddings", "3"], "model.decoder.tie_embeddings"),
    (["--optim.betas", "0.9"], "optim.betas"),
    (["--model", "0"], "model"),
    (["--model", "[]"], "model"),
    (["--trainer.logger", "[csv, 3]"], "trainer.logger"),
    (["--trainer.deterministic", "always"], "trainer.deterministic"),
])
def test_wrong_type_names_the_key(flags, key):
    with pytest.raises(UserError) as error:
        load_config(CONFIGS / "debug.yaml", flags)
    message = str(error.value)
    assert message.startswith(f"config: {key} must be")
    assert "\n" not in message


@pytest.mark.parametrize("flags, key", [
    (["--model.latent_dim", "0"], "model.latent_dim"),
    (["--model.latent_dim", "-3"], "model.latent_dim"),
    (["--model.word_dropout", "-0.1"], "model.word_dropout"),
    (["--model.word_dropout", "1.5"], "model.word_dropout"),
    (["--model.word_dropout", ".nan"], "model.word_dropout"),
    (["--model.decoder.type", "lstm"], "model.decoder.type"),
    (["--kl.schedule", "cosine"], "kl.schedule"),
    (["--data.batch_size", "0"], "data.batch_size"),
    (["--data.batch_size", "-1"], "data.batch_size"),
    (["--data.max_length", "1"], "data.max_length"),
    (["--data.tokenizer", "char"], "data.tokenizer"),
    (["--model.encoder.heads", "3"], "model.encoder.heads"),
    (["--trainer.logger", "comet"], "trainer.logger"),
    (["--trainer.check_val_every_n_epoch", "0"], "trainer.check_val_every_n_epoch"),
    (["--trainer.early_stopping_patience", "-1"], "trainer.early_stopping_patience"),
    (["--trainer.best_by", "nll"], "trainer.best_by"),
    (["--model.bow_weight", "-0.5"], "model.bow_weight"),
])
def test_out_of_range_value_names_the_key_and_value(flags, key):
    with pytest.raises(UserError) as error:
        load_config(CONFIGS / "debug.yaml", flags)
    message = str(error.value)
    assert message.startswith(f"config: {key} ")
    assert flags[1].lstrip(".") in message
    assert "\n" not in message


@pytest.mark.parametrize("flags, limit, names", [
    (["--model.encoder.max_positions", "50"], 48, ["model.encoder.max_positions=50"]),
    (["--model.decoder.type", "transformer", "--model.decoder.max_positions", "40"], 39,
     ["model.encoder.max_positions=512", "model.decoder.max_positions=40"]),
], ids=["encoder", "transformer-decoder"])
def test_max_length_must_fit_the_position_tables(flags, limit, names):
    # <bos> w1 .. wn <eos> fills n + 2 encoder positions; a transformer decoder reads <bos> w1 .. wn
    assert load_config(None, [*flags, "--data.max_length", str(limit)]).data.max_length == limit
    with pytest.raises(UserError) as error:
        load_config(None, [*flags, "--data.max_length", str(limit + 1)])
    message = str(error.value)
    assert message.startswith(f"config: data.max_length must be at most {limit}")
    assert all(name in message for name in names) and message.endswith(f"got {limit + 1}")


def test_a_gru_decoder_has_no_position_limit():
    config = load_config(None, ["--model.decoder.max_positions", "10", "--data.max_length", "300"])
    assert config.model.max_words == 510


def test_word_dropout_bounds_are_inclusive():
    assert load_config(None, ["--model.word_dropout", "0"]).model.word_dropout == 0.0
    assert load_config(None, ["--model.word_dropout", "1"]).model.word_dropout == 1.0


@pytest.mark.parametrize("flags", [["--model.latent_dim"], ["model.latent_dim", "3"]], ids=["no-value", "no-dashes"])
def test_malformed_override_is_a_user_error(flags):
    with pytest.raises(UserError, match="model.latent_dim"):
        load_config(None, flags)


@pytest.mark.parametrize("config, flags, needle", [
    ("missing.yaml", [], "not found"),
    ("broken.yaml", [], "line 4"),
    ("debug", ["--model.latnt_dim", "32"], "did you mean model.latent_dim"),
    ("debug", ["--model.word_dropout", "2"], "model.word_dropout must be in [0, 1]"),
    ("debug", ["--kl.schedule=warm"], "kl.schedule must be"),
], ids=["missing-file", "yaml-syntax", "unknown-key", "out-of-range", "unknown-schedule"])
def test_cli_config_errors_exit_2_with_one_line(tmp_path, config, flags, needle):
    write_yaml(tmp_path, "seed: 0\nmodel:\n  latent_dim: 8\n   word_dropout: 0.2\n", name="broken.yaml")
    config_path = str(CONFIGS / "debug.yaml") if config == "debug" else config
    result = run_main(["train", "--config", config_path, *flags], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("textvae: error: config: ")
    assert needle in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_trainer_section_passes_only_real_trainer_arguments_to_lightning():
    import inspect

    import lightning as L

    trainer = load_config(None, ["--trainer.logger", "tensorboard", "--trainer.early_stopping_patience", "3",
                                 "--trainer.deterministic", "warn", "--trainer.check_val_every_n_epoch", "null"]).trainer
    assert trainer.logger == ["tensorboard"]  # one name or a list
    kwargs = trainer.lightning_kwargs()
    assert set(kwargs) <= set(inspect.signature(L.Trainer).parameters)  # our own keys (logger, patience) removed
    assert kwargs["deterministic"] == "warn" and kwargs["check_val_every_n_epoch"] is None
