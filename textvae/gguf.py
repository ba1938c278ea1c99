"""GGUF files (llama.cpp's format) as Hugging Face models, for pretrained encoders and decoders.

Users keep many local models as GGUF. transformers reads a GGUF file's config, tokenizer and
weights (`from_pretrained(dir, gguf_file=name)`), dequantising every tensor to float32, through
the optional `gguf` package (`pip install 'textvae[gguf]'`). Choices worth knowing:

- The model transformers returns carries a GGUF "quantization config", which makes it refuse
  `save_pretrained` and would follow it into an export. `read_gguf` rebuilds the module from the
  file's plain config and loads the dequantised weights into it, so what comes out is an
  ordinary model: its export is JSON + safetensors like any other, and loads without `gguf`.
- Dequantised weights are exact copies of the quantised values: a 4-bit file gives a float32 model
  with 4-bit weights, not the original full-precision one.
- `python -m textvae.gguf FILE DIR` writes a plain model directory (config.json, model.safetensors,
  tokenizer files) once, so later loads skip the slow GGUF parsing (scripts/get_smollm2.sh).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from torch import nn

from textvae.errors import UserError, first_line
from textvae.files import atomic_write_dir

EXTRA_HINT = "reading a .gguf file needs the gguf package: pip install 'textvae[gguf]'"


def is_gguf(name: str) -> bool:
    return str(name).lower().endswith(".gguf")


def check_gguf(name: str, key: str) -> Path:
    """The path of GGUF file `name` (config key `key`), or a one-line `UserError`: a missing file,
    one that is not GGUF, or the `gguf` package not installed."""
    path = Path(name).expanduser()
    if not path.is_file():
        raise UserError(f"config: {key}: GGUF file {name!r} does not exist")
    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise UserError(f"config: {key}: {name!r} is not a GGUF file (it does not start with the GGUF magic)")
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"config: {key}: {EXTRA_HINT}")
    return path


def read_config(name: str, key: str):
    """The transformers config of GGUF file `name` (metadata only, no weights)."""
    from transformers import AutoConfig

    path = check_gguf(name, key)
    try:
        return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as error:  # gguf and transformers raise ValueError, KeyError, struct.error, ...
        raise UserError(f"config: {key}: cannot read GGUF file {name!r} ({type(error).__name__}: "
                        f"{first_line(error)})") from None


def read_gguf(name: str, key: str, config=None, kind: str = "decoder") -> tuple[nn.Module, object]:
    """(module, tokenizer) from GGUF file `name`: an `AutoModelForCausalLM` (kind "decoder") or
    `AutoModel` (kind "encoder") with float32 weights and no quantization config, and the file's
    tokenizer. `config`: the file's config when the caller has read it already."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = check_gguf(name, key)
    config = config if config is not None else read_config(name, key)
    model_class = AutoModelForCausalLM if kind == "decoder" else AutoModel
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        loaded = model_class.from_pretrained(str(path.parent), gguf_file=path.name, config=config)
    except Exception as error:
        raise UserError(f"config: {key}: cannot read GGUF file {name!r} ({type(error).__name__}: "
                        f"{first_line(error)})") from None
    if getattr(loaded.config, "quantization_config", None) is None:
        return loaded.float(), tokenizer
    plain_config = config.__class__.from_dict(
        {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    module = model_class.from_config(plain_config)
    module.load_state_dict(loaded.state_dict())
    return module.float(), tokenizer


def convert(name: str, directory: str | Path) -> Path:
    """Write GGUF causal LM `name` as a plain Hugging Face model directory (atomically)."""
    module, tokenizer = read_gguf(name, "gguf")

    def write(tmp: Path) -> None:
        module.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    directory = Path(directory)
    atomic_write_dir(directory, write)
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m textvae.gguf",
                                     description="Write a GGUF causal LM as a plain Hugging Face model directory.")
    parser.add_argument("gguf_file")
    parser.add_argument("directory")
    args = parser.parse_args(argv)
    try:
        print(convert(args.gguf_file, args.directory))
    except UserError as error:
        print(f"textvae: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
