"""Config files and command-line overrides, as ml_collections' `config_flags` reads them.

    --config configs/omni_emotion.py:7b,audio_alignment   → that file's get_config("7b,audio_alignment")
    --config.train.learning_rate=2e-4 --config.data.buckets=4096,8192 --config.train.profile_steps=(5,8)

An override names an existing field (an unknown one is an error naming it and the fields
next to it) and its value is parsed as that field's type (bool: true/false; a tuple: comma
separated or a Python literal); a value of another type is an error naming the field.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import ml_collections

from omni_jax.errors import InputError, MissingInputError, UserError

PREFIX = "--config."
MODEL_PREFIX = PREFIX + "model."
# Fields that hold paths ("*": any evaluator): made absolute against the working directory when
# the command line is read, as path flags are; the inputs among them must exist.
INPUT_PATH_FIELDS = ("data.manifest", "data.tokenizer", "evals.*.manifest", "data.face_detector",
                     "media.face_detector")
# values of path fields that name something instead ("retinaface": the bundled weights)
NAMED_VALUES = {"data.face_detector": ("retinaface", "haar"), "media.face_detector": ("retinaface",)}
OUTPUT_PATH_FIELDS = ("evals.*.endpoint.cache", "cache")


def load_config(spec: str) -> ml_collections.ConfigDict:
    """"configs/omni_emotion.py:tiny" → that file's get_config("tiny") (no argument: its default)."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    if module_spec is None or not Path(path).is_file():
        raise MissingInputError(f"{path}: no such config file")
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(Path(path).resolve().parent.parent))  # configs import each other as `configs.*`
    try:
        module_spec.loader.exec_module(module)
        return module.get_config(arg) if arg else module.get_config()
    except UserError:
        raise
    except Exception as error:  # the config file is the user's code: its failure is theirs to read (--debug)
        raise InputError(f"{spec}: the config file failed: {type(error).__name__}: {error}") from error
    finally:
        sys.path.pop(0)


def _parse(text: str, current: Any, name: str) -> Any:
    """`text` as a value of `current`'s type."""
    def wrong(expected: str) -> InputError:
        return InputError(f"{PREFIX}{name}={text}: expected {expected} (the field holds {current!r})")

    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise wrong("true or false")
        return text.lower() in ("true", "1", "yes")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise wrong("an integer") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise wrong("a number") from None
    if isinstance(current, str):
        return text
    if isinstance(current, (tuple, list)):
        if text.strip()[:1] in "([":
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                raise wrong("a tuple literal") from None
            if not isinstance(value, (tuple, list)):
                raise wrong("a tuple")
        else:
            value = [item.strip() for item in text.split(",") if item.strip()]
            if current:
                value = [_parse(item, current[0], name) for item in value]
            else:
                value = [_literal(item) for item in value]
        return type(current)(value)
    if isinstance(current, ml_collections.ConfigDict):
        raise InputError(f"{PREFIX}{name} is a section; set its fields ({', '.join(sorted(current.keys()))})")
    return _literal(text)  # a None field: any literal, else the string


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Sets each `--config.a.b=value` of `overrides` on `cfg` (in place; returned)."""
    for item in overrides:
        if not item.startswith(PREFIX) or "=" not in item:
            raise InputError(f"unrecognised argument {item!r}: config overrides are {PREFIX}FIELD=VALUE")
        path, _, text = item[len(PREFIX):].partition("=")
        *parents, name = path.split(".")
        section = cfg
        for depth, part in enumerate(parents + [name]):
            if not isinstance(section, ml_collections.ConfigDict) or part not in section:
                where = ".".join(parents[:depth]) or "the config"
                fields = sorted(section.keys()) if isinstance(section, ml_collections.ConfigDict) else []
                raise InputError(f"{PREFIX}{path}: {where} has no field {part!r}; it has {', '.join(fields)}")
            if depth < len(parents):
                section = section[part]
        value = _parse(text, section[name], path)
        try:
            section[name] = value
        except TypeError as error:
            raise InputError(f"{PREFIX}{path}={text}: {error}") from None
    return cfg


def absolute(path: str) -> str:
    """A path typed on the command line, absolute against the working directory (`~` expanded);
    a remote one (gs://…) as it is."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def resolve_paths(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Makes the set path fields of `cfg` absolute (in place; returned); an input that does not
    exist is an error naming its field. Remote paths (gs://…) are left as they are."""
    for pattern in INPUT_PATH_FIELDS + OUTPUT_PATH_FIELDS:
        for section, name, dotted in _fields(cfg, pattern.split(".")):
            value = section[name]
            if not isinstance(value, str) or not value or "://" in value or value in NAMED_VALUES.get(pattern, ()):
                continue
            path = absolute(value)
            if pattern in INPUT_PATH_FIELDS and not os.path.exists(path):
                raise MissingInputError(f"{PREFIX}{dotted}={value}: no such file or directory")
            section[name] = path
    return cfg


def _fields(section: Any, parts: list[str], where: str = "") -> list[tuple[ml_collections.ConfigDict, str, str]]:
    """(section, name, dotted path) of every field matching `parts` ("*" matches any name)."""
    if not isinstance(section, ml_collections.ConfigDict):
        return []
    head, *rest = parts
    names = sorted(section.keys()) if head == "*" else [head] if head in section else []
    if not rest:
        return [(section, name, where + name) for name in names]
    return [match for name in names for match in _fields(section[name], rest, f"{where}{name}.")]
