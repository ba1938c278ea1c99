"""Loading a config: dataclass defaults <- YAML file <- dotted command-line flags, into the schema
of schema.py.

Loading validates the whole tree before any work starts and reports problems as one-line
`UserError`s that name the key (with the closest valid key for typos) or the YAML line. Flags
follow the jsonargparse/LightningCLI convention (`--model.latent_dim 32`, values parsed as YAML);
we walk the dataclasses ourselves rather than through jsonargparse so that every error is a
single line naming the key, which jsonargparse's multi-line usage errors are not.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from textvae.config.schema import Config
from textvae.errors import UserError


# ---------------------------------------------------------------------------------------------
# building dataclasses from plain dicts, with one-line errors


def _type_ok(value: Any, annotation: Any) -> tuple[bool, Any]:
    """Whether `value` fits `annotation`; returns (ok, value converted where harmless)."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True, value
    if origin in (Union, types.UnionType):
        for option in typing.get_args(annotation):
            ok, converted = _type_ok(value, option)
            if ok:
                return True, converted
        return False, value
    if origin is Literal:
        return value in typing.get_args(annotation), value
    if annotation is type(None):
        return value is None, value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        if isinstance(value, str):  # PyYAML reads exponents without a dot (1e-4) as strings
            try:
                return True, float(value)
            except ValueError:
                return False, value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if annotation is str:
        return isinstance(value, str), value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(annotation)
        if origin is tuple and len(args) != len(value):
            return False, value
        item_types = args if origin is tuple else [args[0]] * len(value)
        converted = []
        for item, item_type in zip(value, item_types):
            ok, item = _type_ok(item, item_type)
            if not ok:
                return False, value
            converted.append(item)
        return True, origin(converted)
    raise TypeError(f"unsupported config annotation {annotation!r}")


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(annotation))
    text = str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", text) if not typing.get_args(annotation) else text


def from_dict(cls: type, values: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from nested dicts, rejecting unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise UserError(f"config: {prefix.rstrip('.') or 'top level'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (valid keys: {', '.join(names)})"
            raise UserError(f"config: unknown key {prefix}{key}{hint}")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = from_dict(annotation, {} if value is None else value, f"{prefix}{key}.")
            continue
        ok, converted = _type_ok(value, annotation)
        if not ok:
            raise UserError(f"config: {prefix}{key} must be {_describe(annotation)}, got {value!r}")
        kwargs[key] = converted
    return cls(**kwargs)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"config: file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"config: YAML syntax error in {path}{where}: {problem}") from None
    except UnicodeDecodeError:
        raise UserError(f"config: {path} is not UTF-8 text") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"config: {path} must hold a mapping of sections, got {type(loaded).__name__}")
    return loaded


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def parse_overrides(args: list[str]) -> dict:
    """`--a.b VALUE` / `--a.b=VALUE` pairs to a nested dict; values are parsed as YAML scalars."""
    tree: dict = {}
    position = 0
    while position < len(args):
        arg = args[position]
        if not arg.startswith("--") or len(arg) == 2:
            raise UserError(f"unexpected argument {arg!r} (overrides look like --model.latent_dim 32)")
        if "=" in arg:
            key, text = arg[2:].split("=", 1)
            position += 1
        else:
            if position + 1 >= len(args):
                raise UserError(f"{arg} needs a value")
            key, text = arg[2:], args[position + 1]
            position += 2
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        _set_dotted(tree, key, value)
    return tree


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Defaults <- YAML `path` <- `overrides` (dotted flags or a nested dict), validated."""
    tree = _read_yaml(Path(path)) if path is not None else {}
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    tree = _merge(tree, overrides or {})
    config = from_dict(Config, tree)
    if config.output_dir is None:
        config.output_dir = str(Path("runs") / (Path(path).stem if path is not None else "default"))
    return config


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
