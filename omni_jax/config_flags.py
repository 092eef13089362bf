"""Configs by name or file, command-line overrides, path fields and allowed ranges.

    --config omni_emotion:7b,audio_alignment     → omni_jax.configs.omni_emotion.get_config("7b,audio_alignment")
    --config my_configs/run.py:small             → that file's get_config("small")
    --config.train.learning_rate=2e-4 --config.data.buckets=4096,8192

A config is a module with `get_config(arg)`: the package's own (`omni_jax/configs/`, the
repository's configs/ folder) by name, or any file by path (a `.py` path, or one with a folder);
a user's file imports the package's as `from omni_jax.configs import omni_emotion`. `arg` is
big_vision's: comma-separated parts, each `name=value` or a bare value for the next of the
config's fields in order (`parse_arg`).

An override names an existing field (an unknown one is an error naming it and the fields next
to it) and its value is parsed as that field's type (bool: true/false; a tuple: comma separated
or a Python literal); a value of another type is an error naming the field.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import ml_collections

from omni_jax.errors import InputError, MissingInputError, UserError

PREFIX = "--config."
MODEL_PREFIX = PREFIX + "model."
CONFIGS_PACKAGE = "omni_jax.configs"


def _configs_dir() -> Path:
    return Path(importlib.import_module(CONFIGS_PACKAGE).__file__).resolve().parent


def config_names() -> list[str]:
    """The configs the package ships, by name."""
    return sorted(p.stem for p in _configs_dir().glob("*.py") if p.stem != "__init__")


def load_config(spec: str) -> ml_collections.ConfigDict:
    """"omni_emotion:tiny" or "path/to/file.py:tiny" → its get_config("tiny") (no argument: its default)."""
    name, _, arg = spec.partition(":")
    by_path = name.endswith(".py") or os.sep in name or "/" in name
    if by_path:
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise MissingInputError(f"--config {name}: no such config file" + (" (a folder)" if path.is_dir() else ""))
        if path.parent == _configs_dir():  # one of the package's own: imported so its relative imports work
            module = importlib.import_module(f"{CONFIGS_PACKAGE}.{path.stem}")
        else:
            module = _module_from_file(path, spec)
    else:
        if name not in config_names():
            raise InputError(f"--config {spec}: no config named {name!r}; the package has {', '.join(config_names())}"
                             " (or give a file's path)")
        module = importlib.import_module(f"{CONFIGS_PACKAGE}.{name}")
    try:
        return module.get_config(arg) if arg else module.get_config()
    except UserError:
        raise
    except Exception as error:  # the config file is the user's code: its failure is theirs to read (--debug)
        raise InputError(f"--config {spec}: get_config failed: {type(error).__name__}: {error}") from error


def _module_from_file(path: Path, spec: str) -> Any:
    module_spec = importlib.util.spec_from_file_location(f"omni_jax_user_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:
        raise InputError(f"--config {spec}: the config file failed: {type(error).__name__}: {error}") from error
    if not callable(getattr(module, "get_config", None)):
        raise InputError(f"--config {spec}: {path} defines no get_config(arg)")
    return module


def parse_arg(arg: str, **fields: Any) -> ml_collections.ConfigDict:
    """A `get_config(arg)` argument as big_vision reads one: "7b,phase=audio_alignment" with
    fields variant="7b", phase="instruction_tuning" → {variant: "7b", phase: "audio_alignment"}.
    Bare parts fill `fields` in order, `name=value` parts name one (bare parts first); each
    value is parsed as its default's type. Fields not given keep their defaults."""
    values = dict(fields)
    named = False
    for position, part in enumerate(p.strip() for p in (arg or "").split(",") if p.strip()):
        name, equals, text = part.partition("=")
        if equals:
            named = True
        elif named or position >= len(fields):
            raise InputError(f"config argument {arg!r}: {part!r} must be name=value (names: {', '.join(fields)})")
        else:
            name, text = list(fields)[position], part
        if name not in fields:
            raise InputError(f"config argument {arg!r}: no field {name!r}; the fields are {', '.join(fields)}")
        values[name] = _parse(text, fields[name], name, where=f"config argument {arg!r}: {name}")
    return ml_collections.ConfigDict(values)


def _parse(text: str, current: Any, name: str, where: str | None = None) -> Any:
    """`text` as a value of `current`'s type."""
    where = where or f"{PREFIX}{name}={text}"

    def wrong(expected: str) -> InputError:
        return InputError(f"{where}: expected {expected} (the field holds {current!r})")

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
                value = [_parse(item, current[0], name, where) for item in value]
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


# --- Path fields ------------------------------------------------------------------------------
# Fields that hold paths ("*": any name), by what they must be: made absolute against the
# working directory when the command line is read, as path flags are; inputs must exist and be
# of their kind. "" leaves a field unset.
INPUT_FILES = ("data.manifest", "evals.*.manifest", "manifest.classes")
INPUT_FOLDERS = ("data.tokenizer", "data.face_detector.weights", "faces.detector.weights",
                 "media.face_detector.weights")
OUTPUT_FOLDERS = ("evals.*.endpoint.cache", "cache")


def path_problem(path: str, kind: str) -> str | None:
    """Why `path` cannot be read as a `kind` ("file", "folder" or "any": either), or None."""
    if not os.path.lexists(path):
        return "no such file or directory"
    if not os.path.exists(path):
        return "a broken link"
    if kind == "file" and os.path.isdir(path):
        return "a folder, where a file is expected"
    if kind == "folder" and not os.path.isdir(path):
        return "a file, where a folder is expected"
    if not os.access(path, os.R_OK | (os.X_OK if os.path.isdir(path) else 0)):
        return "not readable (permission denied)"
    return None


def output_problem(path: str, kind: str) -> str | None:
    """Why `path` cannot be written as a `kind` ("file" or "folder"), or None (it need not exist)."""
    if kind == "file" and os.path.isdir(path):
        return "a folder, where a file is to be written"
    if kind == "folder" and os.path.exists(path) and not os.path.isdir(path):
        return "a file, where a folder is to be written"
    parent = Path(path).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, where a folder is expected"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable (permission denied)"
    return None


def resolve_paths(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Makes the set path fields of `cfg` absolute (in place; returned); an input that is not
    there, or not of its kind, is an error naming its field. Remote paths (gs://…) are left as
    they are."""
    kinds = [(p, "file") for p in INPUT_FILES] + [(p, "folder") for p in INPUT_FOLDERS]
    for pattern, kind in kinds + [(p, "output") for p in OUTPUT_FOLDERS]:
        for section, name, dotted in _fields(cfg, pattern.split(".")):
            value = section[name]
            if not isinstance(value, str) or not value or "://" in value:
                continue
            path = absolute(value)
            problem = output_problem(path, "folder") if kind == "output" else path_problem(path, kind)
            if problem:
                raise MissingInputError(f"{PREFIX}{dotted}={value}: {problem}") if "no such" in problem else \
                    InputError(f"{PREFIX}{dotted}={value}: {problem}")
            section[name] = path
    return cfg


def set_paths(cfg: ml_collections.ConfigDict) -> dict[str, str]:
    """The path fields that are set: {"--config.data.manifest": path}."""
    patterns = INPUT_FILES + INPUT_FOLDERS + OUTPUT_FOLDERS
    return {f"{PREFIX}{dotted}": section[name] for pattern in patterns
            for section, name, dotted in _fields(cfg, pattern.split(".")) if section[name]}


def _fields(section: Any, parts: list[str], where: str = "") -> list[tuple[ml_collections.ConfigDict, str, str]]:
    """(section, name, dotted path) of every field matching `parts` ("*" matches any name)."""
    if not isinstance(section, ml_collections.ConfigDict):
        return []
    head, *rest = parts
    names = sorted(section.keys()) if head == "*" else [head] if head in section else []
    if not rest:
        return [(section, name, where + name) for name in names]
    return [match for name in names for match in _fields(section[name], rest, f"{where}{name}.")]


# --- Allowed ranges ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Range:
    """low ≤ value ≤ high (an open end: strictly), None for no bound; `none`: None is allowed too."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    none: bool = False

    def __contains__(self, value: Any) -> bool:
        if value is None:
            return self.none
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return False
        above = self.low is None or (value > self.low if self.open_low else value >= self.low)
        below = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return above and below

    def __str__(self) -> str:
        low = "(-∞" if self.low is None else f"{'(' if self.open_low else '['}{self.low:g}"
        high = "∞)" if self.high is None else f"{self.high:g}{')' if self.open_high else ']'}"
        return f"{low}, {high}" + (" or None" if self.none else "")


AT_LEAST_0 = Range(0)
AT_LEAST_1 = Range(1)
POSITIVE = Range(0, open_low=True)
FRACTION = Range(0, 1)


def check_ranges(cfg: ml_collections.ConfigDict, *tables: Mapping[str, Range | tuple[Any, ...]]) -> None:
    """Every field the `tables` name ("section.field"; "*" for any name) within its Range, or
    among its tuple of choices, else an error naming the field, its value and what is allowed.
    Called by each job before it loads anything, with the tables of the code that reads those
    fields."""
    for table in tables:
        for pattern, allowed in table.items():
            for section, name, dotted in _fields(cfg, pattern.split(".")):
                value = section[name]
                if isinstance(allowed, tuple):
                    if value not in allowed:
                        raise InputError(f"{PREFIX}{dotted}={value!r}: expected one of "
                                         f"{', '.join(repr(a) for a in allowed)}")
                elif value not in allowed:
                    raise InputError(f"{PREFIX}{dotted}={value!r} is out of range: allowed {allowed}")
