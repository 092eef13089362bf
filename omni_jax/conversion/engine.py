"""The streaming conversion engine.

HF → orbax: plan every source key against the model's abstract parameter tree and the
format's table (names, layer indices and shapes are all checked before a byte of data is
read), then build one Flax leaf at a time — reading its source tensors one by one, stacking
scanned layers — and hand each leaf to orbax's partial save (`checkpoint_dir.checkpoint_writer`),
so the host holds about one leaf at a time. The output appears at `dst` only when everything
is written.

orbax → HF: the inverse tables write transformers-loadable safetensors shards.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from omni_jax import registry
from omni_jax.atomic import atomic_write
from omni_jax.checkpoint_dir import (
    DTYPES,
    PARAMS_DIR,
    checkpoint_writer,
    copy_side_files,
    flat_leaves,
    load_leaf,
    read_config,
    refuse_existing,
    stored_leaves,
)
from omni_jax.conversion.formats import READS, WRITES, Format, Rule, family_for_hf_config
from omni_jax.conversion.io import CheckpointReader, SafetensorsWriter
from omni_jax.conversion.transforms import Packed
from omni_jax.errors import CheckpointRefused, InputError, MissingInputError
from omni_jax.progress import QUIET, Progress

log = logging.getLogger(__name__)

# what a Hugging Face directory holds besides its tokenizer's and processor's files
_WEIGHT_FILE = re.compile(r"(.*\.safetensors|pytorch_model.*\.bin|model\.safetensors\.index\.json|"
                          r"pytorch_model\.bin\.index\.json|config\.json)$")


class ConversionError(CheckpointRefused):
    """A checkpoint that does not fit the model: every offending key with its shapes."""

    def __init__(self, src: Path | str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{src}: checkpoint does not match the model ({len(problems)} problem(s)):\n  "
                         + "\n  ".join(problems))


@dataclasses.dataclass
class _Leaf:
    """One Flax parameter and the source tensors that build it (layer index → key)."""

    path: str
    shape: tuple[int, ...]
    rule: Rule
    sources: dict[int | None, str] = dataclasses.field(default_factory=dict)

    @property
    def layer_shape(self) -> tuple[int, ...]:
        return self.shape[1:] if self.rule.stacked else self.shape


def abstract_params(family: registry.ModelFamily, config) -> dict[str, jax.ShapeDtypeStruct]:
    """Flat {"a/b/c": ShapeDtypeStruct} of the model's parameters, without allocating them."""
    return flat_leaves(registry.abstract_params(family, config))


def _match(fmt: Format, keys: list[str]) -> tuple[dict[str, list[tuple[Rule, int | None]]], list[str], list[str]]:
    """Source key → its (rule, layer) pairs (several where one packed tensor feeds several
    parameters, e.g. torchvision's qkv); plus the unknown keys and the deliberately ignored ones."""
    stacked = [(r, r.pattern) for r in fmt.rules if r.stacked]
    ignore = [re.compile(p) for p in fmt.ignore]
    matched, unknown, ignored = {}, [], []
    for key in keys:
        hits = [(r, None) for r in fmt.rules if not r.stacked and r.source == key]
        hits += [(r, int(m.group("layer"))) for r, pattern in stacked if (m := pattern.match(key))]
        if hits:
            matched[key] = hits
        else:
            (ignored if any(p.match(key) for p in ignore) else unknown).append(key)
    return matched, unknown, ignored


def plan(reader: CheckpointReader, family: registry.ModelFamily, config) -> tuple[Format, list[_Leaf]]:
    """Checks names, layer counts and shapes; raises ConversionError naming every problem."""
    keys = reader.keys()
    fmt = max(READS[family.model_type], key=lambda f: len(_match(f, keys)[0]))
    matched, unknown, ignored = _match(fmt, keys)
    if ignored:
        log.info("dropping %d tensor(s) the model does not use, e.g. %s", len(ignored), ignored[:3])
    targets = abstract_params(family, config)
    leaves = {path: _Leaf(path, tuple(spec.shape), None) for path, spec in targets.items()}
    rules_by_target = {r.target: r for r in fmt.rules}
    problems = [f"unexpected key {k!r} {list(reader.tensors[k].shape)}: no parameter of the model takes it"
                for k in unknown]
    for key, rule, layer in ((k, r, i) for k, hits in matched.items() for r, i in hits):
        leaf = leaves.get(rule.target)
        if leaf is None:
            problems.append(f"unexpected key {key!r} {list(reader.tensors[key].shape)}: "
                            f"this model configuration has no {rule.target!r}")
            continue
        leaf.rule = rule
        if layer is not None and layer >= leaf.shape[0]:
            problems.append(f"unexpected key {key!r}: layer {layer} but the config has {leaf.shape[0]} layers")
            continue
        expected = rule.transform.torch_shape(leaf.layer_shape)
        found = reader.tensors[key].shape
        if tuple(found) != tuple(expected):
            problems.append(f"shape mismatch for {key!r}: expected {list(expected)}, found {list(found)}")
        leaf.sources[layer] = key
    for leaf in leaves.values():
        rule = leaf.rule or rules_by_target.get(leaf.path)
        if rule is None:
            problems.append(f"parameter {leaf.path!r} {list(leaf.shape)} has no rule in format {fmt.name!r}")
            continue
        leaf.rule = rule
        wanted = range(leaf.shape[0]) if rule.stacked else [None]
        for layer in wanted:
            if layer not in leaf.sources:
                key = rule.source.replace("{layer}", str(layer))
                problems.append(f"missing key {key!r}: expected {list(rule.transform.torch_shape(leaf.layer_shape))}"
                                f" for {leaf.path!r}")
    if problems:
        raise ConversionError(reader.src, problems)
    return fmt, list(leaves.values())


def convert_hf_to_orbax(src: str | os.PathLike, dst: str | os.PathLike, dtype: str | None = None,
                        progress: Progress = QUIET) -> Path:
    """Converts a Hugging Face checkpoint directory into `dst` (orbax params + omni_jax.json).

    dtype: "float32", "bfloat16" or "float16" for the stored parameters; None keeps each
    tensor's source dtype. Returns `dst`. On any error nothing is left at `dst`.
    """
    src = Path(src)
    config_file = src / "config.json"
    if not config_file.is_file():
        raise MissingInputError(f"{src}: no config.json (a Hugging Face checkpoint directory is expected)")
    try:
        hf_config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointRefused(f"{config_file}: not JSON ({error})") from None
    family, config = family_for_hf_config(hf_config)
    return write_checkpoint(CheckpointReader(src), family, config, dst, dtype, hf_config, progress,
                            side_files=lambda tmp: copy_side_files(src, tmp, skip=_WEIGHT_FILE.match))


def write_checkpoint(reader: CheckpointReader, family: registry.ModelFamily, config: ml_collections.ConfigDict,
                     dst: str | os.PathLike, dtype: str | None, hf_config: dict[str, Any],
                     progress: Progress = QUIET, side_files: Any = None) -> Path:
    """Plans `reader`'s tensors against `family` and streams them into an orbax checkpoint at `dst`.

    The engine every converter shares: only the reader (which file, which keys) differs."""
    fmt, leaves = plan(reader, family, config)
    meta = {"model_type": family.model_type, "config": config.to_dict(), "hf_config": hf_config,
            "source_format": fmt.name, "dtype": dtype or "source"}
    with checkpoint_writer(dst, meta, side_files) as save:
        for path, array in converted_leaves(reader, leaves, dtype, progress):
            save(path, array)
            del array
    return Path(dst)


def converted_leaves(reader: CheckpointReader, leaves: list[_Leaf], dtype: str | None = None,
                     progress: Progress = QUIET) -> Iterator[tuple[str, np.ndarray]]:
    """Each planned leaf as ("a/b/c", array), built from its source tensors one at a time."""
    out_dtype = DTYPES[dtype] if dtype else None
    total = sum(reader.tensors[k].nbytes for leaf in leaves for k in leaf.sources.values())
    with progress.bar(total=total, unit="B", unit_scale=True, desc=f"converting {reader.src.name}") as bar:
        for leaf in leaves:
            dtypes = {reader.tensors[k].dtype for k in leaf.sources.values()}
            array = np.empty(leaf.shape, out_dtype or max(dtypes, key=lambda d: d.itemsize))
            for layer, key in sorted(leaf.sources.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
                value = leaf.rule.transform.to_flax(reader.read(key), leaf.layer_shape)
                if layer is None:
                    array[...] = value
                else:
                    array[layer] = value
                bar.update(reader.tensors[key].nbytes)
                del value
            yield leaf.path, array


def convert_in_memory(reader: CheckpointReader, family: registry.ModelFamily,
                      config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The parameter tree `reader`'s tensors make, planned and checked as for a checkpoint, held
    in memory (small models: the bundled face detector's 0.4 M parameters)."""
    _, leaves = plan(reader, family, config)
    return traverse_util.unflatten_dict(dict(converted_leaves(reader, leaves)), sep="/")


def source_tensors(fmt: Format, params: Any) -> dict[str, np.ndarray]:
    """A parameter tree as `fmt`'s source tensors, in memory (small models: the stand-in parts of
    `omni-jax synth --parts`): each leaf written back by its rule's transform, the blocks of a
    packed source (torchvision's qkv) joined in their order."""
    flat = flat_leaves(params)
    tensors: dict[str, np.ndarray] = {}
    blocks: dict[str, dict[int, np.ndarray]] = collections.defaultdict(dict)
    for rule in fmt.rules:
        if rule.target not in flat:
            continue
        value = np.asarray(flat[rule.target])
        for layer in range(value.shape[0]) if rule.stacked else [None]:
            key = rule.source if layer is None else rule.source.replace("{layer}", str(layer))
            part = value if layer is None else value[layer]
            if isinstance(rule.transform, Packed):
                blocks[key][rule.transform.index] = rule.transform.inner.to_torch(part, part.shape)
            else:
                tensors[key] = rule.transform.to_torch(part, part.shape)
    tensors.update({key: np.concatenate([parts[i] for i in sorted(parts)]) for key, parts in blocks.items()})
    return {key: np.ascontiguousarray(value) for key, value in tensors.items()}


def export_orbax_to_hf(src: str | os.PathLike, dst: str | os.PathLike, dtype: str | None = None,
                       naming: str | None = None, progress: Progress = QUIET) -> Path:
    """Writes a converted checkpoint back as safetensors + config.json.

    One leaf is read at a time and its tensors streamed into planned shards.
    naming: the format whose key names to write; default: the one it came from, or
    transformers' own names when it came from a format transformers cannot load; Omni-Emotion,
    which no transformers class holds, gets its own documented layout (formats.OMNI_EMOTION).
    """
    src, dst = Path(src), Path(dst)
    meta = read_config(src)
    model_type = meta["model_type"]
    family, writes = registry.FAMILIES[model_type], WRITES[model_type]
    if not writes:
        raise CheckpointRefused(f"{src}: {model_type} checkpoints have no format to export to")
    formats = {f.name: f for f in READS[model_type]}
    naming = naming or (meta["source_format"] if meta["source_format"] in writes else writes[0])
    if naming not in formats:
        raise InputError(f"unknown naming {naming!r} for {model_type}; choose from {sorted(formats)}")
    refuse_existing(dst)
    rules = {rule.target: rule for rule in formats[naming].rules}
    stored = stored_leaves(src / PARAMS_DIR)
    entries, plan_by_leaf = [], []
    for path, leaf in stored.items():
        rule = rules[path]
        out_dtype = DTYPES[dtype] if dtype else np.dtype(leaf.dtype)
        layer_shape = tuple(leaf.shape[1:] if rule.stacked else leaf.shape)
        keys = ([rule.source.replace("{layer}", str(i)) for i in range(leaf.shape[0])] if rule.stacked
                else [rule.source])
        entries += [(key, rule.transform.torch_shape(layer_shape), out_dtype) for key in keys]
        plan_by_leaf.append((path, leaf, rule, keys, out_dtype))
    with atomic_write(dst) as tmp, progress.bar(total=len(plan_by_leaf), unit="leaf",
                                                desc=f"exporting {src.name}") as bar:
        tmp.mkdir()
        writer = SafetensorsWriter(tmp, entries)
        for path, leaf, rule, keys, out_dtype in plan_by_leaf:
            value = load_leaf(src / PARAMS_DIR, path, leaf)
            for i, key in enumerate(keys):
                part = value[i] if rule.stacked else value
                writer.write(key, np.ascontiguousarray(rule.transform.to_torch(part, part.shape)).astype(out_dtype))
            del value
            bar.update()
        writer.close()
        same_names = naming == meta["source_format"]
        hf_config = dict(meta["hf_config"] if same_names else family.config_to_hf(registry.to_config(meta["config"])))
        if dtype:
            hf_config["dtype"] = dtype
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        copy_side_files(src, tmp)
    return dst
