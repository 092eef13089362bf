"""The streaming conversion engine.

HF → orbax: plan every source key against the model's abstract parameter tree and the
format's table (names, layer indices and shapes are all checked before a byte of data is
read), then build one Flax leaf at a time — reading its source tensors one by one, stacking
scanned layers — and hand each leaf to orbax's partial save, so the host holds about one
leaf at a time. The output appears at `dst` only when everything is written.

orbax → HF: the inverse tables write transformers-loadable safetensors shards.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import ml_collections
import ml_dtypes
import numpy as np
from flax import traverse_util
from tqdm import tqdm

from omni_jax import registry
from omni_jax.conversion.formats import Format, Rule
from omni_jax.conversion.io import CheckpointReader, SafetensorsWriter, weight_files
from omni_jax.errors import CheckpointRefused, InputError, MissingInputError, OutputExistsError

log = logging.getLogger(__name__)

CONFIG_FILE = "omni_jax.json"
PARAMS_DIR = "params"
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
          "float16": np.dtype(np.float16)}
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


def flat_leaves(tree: Any) -> dict[str, Any]:
    """A nested dict tree as {"a/b/c": leaf}: the path form every table and plan here uses."""
    return {"/".join(str(k.key) for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


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
    fmt = max(family.formats, key=lambda f: len(_match(f, keys)[0]))
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


GROUP_BYTES = 64 << 20  # small leaves written together, up to this size (checkpoint_writer)


def _nested(path: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(path.split("/")):
        out = {part: out}
    return out


def _temp_dir(dst: Path) -> Path:
    if dst.exists():
        raise OutputExistsError(f"{dst} already exists; choose a new output directory")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _copy_side_files(src: Path, dst: Path) -> None:
    """Tokenizer, processor and generation files travel with the weights."""
    for path in src.iterdir():
        if path.is_file() and not _WEIGHT_FILE.match(path.name) and path.name != CONFIG_FILE:
            shutil.copy2(path, dst / path.name)


def convert_hf_to_orbax(src: str | os.PathLike, dst: str | os.PathLike, dtype: str | None = None,
                        progress: bool = True) -> Path:
    """Converts a Hugging Face checkpoint directory into `dst` (orbax params + omni_jax.json).

    dtype: "float32", "bfloat16" or "float16" for the stored parameters; None keeps each
    tensor's source dtype. Returns `dst`. On any error nothing is left at `dst`.
    """
    src = Path(src)
    config_file = src / "config.json"
    if not config_file.exists():
        raise MissingInputError(f"{src}: no config.json (a Hugging Face checkpoint directory is expected)")
    hf_config = json.loads(config_file.read_text())
    family, config = registry.family_for_hf_config(hf_config)
    return write_checkpoint(CheckpointReader(src), family, config, dst, dtype, hf_config, progress, side_files=src)


@contextlib.contextmanager
def checkpoint_writer(dst: str | os.PathLike, meta: dict[str, Any],
                      side_files: Path | None = None) -> Iterator[Callable[[str, np.ndarray | jax.Array], None]]:
    """Yields `save(path, array)`, which writes one leaf ("a/b/c") of a new checkpoint at `dst`.

    Leaves go to orbax in groups of up to GROUP_BYTES (partial saves), so the host holds about
    one large leaf, or a group of small ones: orbax merges the whole tree's metadata at every
    partial save, so one save per leaf costs time quadratic in the leaf count (a tiny
    Omni-Emotion's 176 leaves: 40 s, grouped: 2 s). On a clean exit the params are finalised, `meta` becomes omni_jax.json, `side_files`' tokenizer
    and processor files are copied, and the directory appears at `dst` at once; on any error
    nothing is left behind."""
    import orbax.checkpoint.experimental.v1 as ocp

    # Orbax's defaults copy each host array before writing it and hold a zstd-compressed copy
    # too: 3.6x the leaf at peak. save() returns once written, so no copy is needed; weights
    # barely compress (~25%), so peak memory and time win over disk (bench_convert_memory.py).
    context = ocp.Context()
    context.memory.deepcopy_host_arrays = False
    context.array.saving.use_compression = False
    dst = Path(dst).absolute()  # orbax takes absolute paths only
    tmp = _temp_dir(dst)

    group: dict[str, Any] = {}

    def flush() -> None:
        if group:
            with context:
                ocp.partial.save(tmp / PARAMS_DIR, traverse_util.unflatten_dict(group, sep="/"))
            group.clear()

    def save(path: str, array: np.ndarray) -> None:
        group[path] = array
        if sum(a.nbytes for a in group.values()) >= GROUP_BYTES:  # a large leaf goes at once
            flush()

    try:
        yield save
        flush()
        with context:
            ocp.partial.finalize(tmp / PARAMS_DIR)
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        if side_files is not None:
            _copy_side_files(side_files, tmp)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_checkpoint(reader: CheckpointReader, family: registry.ModelFamily, config, dst: str | os.PathLike,
                     dtype: str | None, hf_config: dict[str, Any], progress: bool = True,
                     side_files: Path | None = None) -> Path:
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
                     progress: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    """Each planned leaf as ("a/b/c", array), built from its source tensors one at a time."""
    out_dtype = DTYPES[dtype] if dtype else None
    total = sum(reader.tensors[k].nbytes for leaf in leaves for k in leaf.sources.values())
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"converting {reader.src.name}",
              disable=not progress) as bar:
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


def convert_in_memory(reader: CheckpointReader, family: registry.ModelFamily, config) -> dict[str, Any]:
    """The parameter tree `reader`'s tensors make, planned and checked as for a checkpoint, held
    in memory (small models: the bundled face detector's 0.4 M parameters)."""
    _, leaves = plan(reader, family, config)
    return traverse_util.unflatten_dict(dict(converted_leaves(reader, leaves)), sep="/")


def save_params(dst: str | os.PathLike, family: registry.ModelFamily, config, params: Any,
                hf_config: dict[str, Any] | None = None) -> Path:
    """Writes an in-memory parameter tree (e.g. a trained or freshly initialised model) as an
    omni_jax checkpoint that `load_pretrained` reads. Sharded jax.Arrays are written shard by
    shard, never gathered: `load_pretrained(dst, mesh=...)` restores them onto any mesh."""
    meta = {"model_type": family.model_type, "config": ml_collections.ConfigDict(config).to_dict(),
            "hf_config": hf_config or {}, "source_format": "params", "dtype": "source"}
    with checkpoint_writer(dst, meta) as save:
        for path, leaf in flat_leaves(params).items():
            save(path, leaf if isinstance(leaf, jax.Array) else np.asarray(leaf))
    return Path(dst)


# Until configs held the model under `model` (2026-12), `omni-jax assemble` stored the whole
# run config, the run's sections beside the model's fields: they are dropped when read.
LEGACY_RUN_SECTIONS = ("data", "train", "eval", "evals", "mesh")


def read_converted_config(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    config_file = path / CONFIG_FILE
    if not config_file.exists():
        raise MissingInputError(f"{path}: not an omni_jax checkpoint (no {CONFIG_FILE})")
    try:
        meta = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointRefused(f"{config_file}: not JSON ({error}); the checkpoint's record of its model") from None
    if meta.get("model_type") == "omni_emotion":  # the model's fields only, also in checkpoints written before
        meta["config"] = {k: v for k, v in meta["config"].items() if k not in LEGACY_RUN_SECTIONS}
    return meta


def stored_leaves(params_dir: Path) -> dict[str, Any]:
    """Flat {"a/b/c": metadata with .shape and .dtype} of an orbax params checkpoint."""
    import orbax.checkpoint.experimental.v1 as ocp

    return flat_leaves(ocp.metadata(Path(params_dir).absolute()).metadata)


def load_leaf(params_dir: Path, path: str, meta: Any) -> np.ndarray:
    """Reads one stored leaf (orbax partial load), leaving the rest on disk."""
    import orbax.checkpoint.experimental.v1 as ocp

    target = _nested(path, jax.ShapeDtypeStruct(meta.shape, meta.dtype,
                                                sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])))
    context = ocp.Context()
    context.pytree.loading.partial_load = True
    with context:
        tree = ocp.load(Path(params_dir).absolute(), target)
    for part in path.split("/"):
        tree = tree[part]
    return np.asarray(tree)


def export_orbax_to_hf(src: str | os.PathLike, dst: str | os.PathLike, dtype: str | None = None,
                       naming: str | None = None, progress: bool = True) -> Path:
    """Writes a converted checkpoint back as safetensors + config.json.

    One leaf is read at a time and its tensors streamed into planned shards.
    naming: the format whose key names to write; default: the one it came from, or
    transformers' own names when it came from a format transformers cannot load; Omni-Emotion,
    which no transformers class holds, gets its own documented layout (formats.OMNI_EMOTION).
    """
    src, dst = Path(src), Path(dst)
    meta = read_converted_config(src)
    family = registry.FAMILIES[meta["model_type"]]
    if not family.export_formats:
        raise CheckpointRefused(f"{src}: {family.model_type} checkpoints have no format to export to")
    formats = {f.name: f for f in family.formats}
    naming = naming or (meta["source_format"] if meta["source_format"] in family.export_formats
                        else family.export_formats[0])
    if naming not in formats:
        raise InputError(f"unknown naming {naming!r} for {family.model_type}; choose from {sorted(formats)}")
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
    tmp = _temp_dir(dst)
    try:
        writer = SafetensorsWriter(tmp, entries)
        for path, leaf, rule, keys, out_dtype in tqdm(plan_by_leaf, desc=f"exporting {src.name}",
                                                      disable=not progress):
            value = load_leaf(src / PARAMS_DIR, path, leaf)
            for i, key in enumerate(keys):
                part = value[i] if rule.stacked else value
                writer.write(key, np.ascontiguousarray(rule.transform.to_torch(part, part.shape)).astype(out_dtype))
            del value
        writer.close()
        same_names = naming == meta["source_format"]
        hf_config = dict(meta["hf_config"] if same_names else family.config_to_hf(registry.to_config(meta["config"])))
        if dtype:
            hf_config["dtype"] = dtype
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        for path in src.iterdir():
            if path.is_file() and path.name != CONFIG_FILE:
                shutil.copy2(path, tmp / path.name)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


__all__ = ["ConversionError", "checkpoint_writer", "convert_hf_to_orbax", "convert_in_memory", "converted_leaves",
           "export_orbax_to_hf", "flat_leaves", "load_leaf", "plan", "read_converted_config", "save_params", "stored_leaves", "weight_files"]
