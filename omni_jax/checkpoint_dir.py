"""What an omni_jax checkpoint directory is, and reading and writing it one leaf at a time.

    DIR/omni_jax.json   {"model_type", "config" (the model's fields), "hf_config",
                         "source_format", "dtype", ...}: the record of the model
    DIR/params/         the parameter tree, an orbax checkpoint
    DIR/tokenizer.json  ... the tokenizer and processor files, where the model has them

The converter writes these, training's final/ is one, and everything that runs a model reads
them through this module (`pretrained.load_pretrained` restores a whole tree onto a mesh).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import ml_collections
import ml_dtypes
import numpy as np
from flax import traverse_util

from omni_jax.atomic import atomic_write
from omni_jax.errors import CheckpointRefused, MissingInputError, OutputExistsError

CONFIG_FILE = "omni_jax.json"
PARAMS_DIR = "params"
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
          "float16": np.dtype(np.float16)}
GROUP_BYTES = 64 << 20  # small leaves written together, up to this size (checkpoint_writer)


def is_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The record of the checkpoint at `path` (its omni_jax.json)."""
    config_file = Path(path) / CONFIG_FILE
    if not config_file.exists():
        raise MissingInputError(f"{path}: not an omni_jax checkpoint (no {CONFIG_FILE})")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointRefused(f"{config_file}: not JSON ({error}); the checkpoint's record of its model") from None


def flat_leaves(tree: Any) -> dict[str, Any]:
    """A nested dict tree as {"a/b/c": leaf}: the path form every table and plan here uses."""
    return {"/".join(str(k.key) for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def stored_leaves(params_dir: Path) -> dict[str, Any]:
    """Flat {"a/b/c": metadata with .shape and .dtype} of an orbax params checkpoint."""
    import orbax.checkpoint.experimental.v1 as ocp

    return flat_leaves(ocp.metadata(Path(params_dir).absolute()).metadata)


def load_leaf(params_dir: Path, path: str, meta: Any) -> np.ndarray:
    """Reads one stored leaf ("a/b/c", its `stored_leaves` metadata), leaving the rest on disk."""
    import orbax.checkpoint.experimental.v1 as ocp

    target: Any = jax.ShapeDtypeStruct(meta.shape, meta.dtype,
                                       sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    for part in reversed(path.split("/")):
        target = {part: target}
    context = ocp.Context()
    context.pytree.loading.partial_load = True
    with context:
        tree = ocp.load(Path(params_dir).absolute(), target)
    for part in path.split("/"):
        tree = tree[part]
    return np.asarray(tree)


def copy_side_files(src: Path, dst: Path, skip: Callable[[str], bool] = lambda name: False) -> None:
    """The files of `src` (tokenizer, processor, generation settings) into `dst`, but those `skip` names."""
    for path in src.iterdir():
        if path.is_file() and path.name != CONFIG_FILE and not skip(path.name):
            shutil.copy2(path, dst / path.name)


@contextlib.contextmanager
def checkpoint_writer(dst: str | os.PathLike, meta: dict[str, Any],
                      side_files: Callable[[Path], None] | None = None
                      ) -> Iterator[Callable[[str, np.ndarray | jax.Array], None]]:
    """Yields `save(path, array)`, which writes one leaf ("a/b/c") of a new checkpoint at `dst`.

    Leaves go to orbax in groups of up to GROUP_BYTES (partial saves), so the host holds about
    one large leaf, or a group of small ones: orbax merges the whole tree's metadata at every
    partial save, so one save per leaf costs time quadratic in the leaf count (a tiny
    Omni-Emotion's 176 leaves: 40 s, grouped: 2 s). On a clean exit the params are finalised,
    `meta` becomes omni_jax.json, side_files(folder) adds its files, and the directory appears
    at `dst` at once; on any error nothing is left behind (`atomic_write`)."""
    import orbax.checkpoint.experimental.v1 as ocp

    # Orbax's defaults copy each host array before writing it and hold a zstd-compressed copy
    # too: 3.6x the leaf at peak. save() returns once written, so no copy is needed; weights
    # barely compress (~25%), so peak memory and time win over disk (bench_convert_memory.py).
    context = ocp.Context()
    context.memory.deepcopy_host_arrays = False
    context.array.saving.use_compression = False
    dst = Path(dst).absolute()  # orbax takes absolute paths only
    refuse_existing(dst)
    with atomic_write(dst) as tmp:
        tmp.mkdir()
        group: dict[str, Any] = {}

        def flush() -> None:
            if group:
                with context:
                    ocp.partial.save(tmp / PARAMS_DIR, traverse_util.unflatten_dict(group, sep="/"))
                group.clear()

        def save(path: str, array: np.ndarray | jax.Array) -> None:
            group[path] = array
            if sum(a.nbytes for a in group.values()) >= GROUP_BYTES:  # a large leaf goes at once
                flush()

        yield save
        flush()
        with context:
            ocp.partial.finalize(tmp / PARAMS_DIR)
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        if side_files is not None:
            side_files(tmp)


def refuse_existing(dst: Path) -> None:
    """A new checkpoint folder: `dst` must not exist, or be an empty folder."""
    if dst.exists() and not (dst.is_dir() and not any(dst.iterdir())):
        raise OutputExistsError(f"{dst} already exists; choose a new output folder (nothing is overwritten)")


def save_params(dst: str | os.PathLike, model_type: str, config: Any, params: Any,
                hf_config: dict[str, Any] | None = None) -> Path:
    """Writes an in-memory parameter tree (e.g. a trained or freshly initialised model) as an
    omni_jax checkpoint that `load_pretrained` reads. Sharded jax.Arrays are written shard by
    shard, never gathered: `load_pretrained(dst, mesh=...)` restores them onto any mesh."""
    meta = {"model_type": model_type, "config": ml_collections.ConfigDict(config).to_dict(),
            "hf_config": hf_config or {}, "source_format": "params", "dtype": "source"}
    with checkpoint_writer(dst, meta) as save:
        for path, leaf in flat_leaves(params).items():
            save(path, leaf if isinstance(leaf, jax.Array) else np.asarray(leaf))
    return Path(dst)
