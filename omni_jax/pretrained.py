"""`load_pretrained`: a converted directory → (Flax module, parameter tree); `save_pretrained`:
a trained Omni-Emotion tree → a complete checkpoint directory (what training's final/ is)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from omni_jax import registry, sharding
from omni_jax.checkpoint_dir import CONFIG_FILE, PARAMS_DIR, read_config


def override_fields(config: dict[str, Any], **values: Any) -> dict[str, Any]:
    """Sets `values` wherever their keys occur, in every sub-config."""
    return {k: override_fields(v, **values) if isinstance(v, dict) else values.get(k, v) for k, v in config.items()}


def with_attention(config: dict[str, Any], implementation: str) -> dict[str, Any]:
    """`config` with `attention_impl` (layers.attention.select_implementation) set in every
    (sub-)config that has a dtype: each tower's, also in checkpoints stored without the field."""
    out = {k: with_attention(v, implementation) if isinstance(v, dict) else v for k, v in config.items()}
    return {**out, "attention_impl": implementation} if "dtype" in config else out


def unstack_layers(params: dict[str, Any], target: Any) -> dict[str, Any]:
    """Stored (scanned) params → the unrolled layout of `target`: where `params` has a stack
    ("layers", Swin's "blocks") and `target` has "{stack}_0", "{stack}_1", ..., each stacked
    leaf is sliced and then dropped, so the extra memory is one leaf."""
    out = {}
    for key, value in params.items():
        if f"{key}_0" in target and key not in target:
            flat = traverse_util.flatten_dict(value)
            per_layer = [dict() for _ in range(next(iter(flat.values())).shape[0])]
            for leaf_path in list(flat):
                stacked = flat.pop(leaf_path)
                for i, layer in enumerate(per_layer):
                    layer[leaf_path] = stacked[i]
                del stacked
            out.update({f"{key}_{i}": traverse_util.unflatten_dict(layer) for i, layer in enumerate(per_layer)})
        elif isinstance(value, dict):
            out[key] = unstack_layers(value, target[key])
        else:
            out[key] = value
    return out


def load_pretrained(path: str | os.PathLike, dtype: str | Any = "float32", mesh: jax.sharding.Mesh | None = None,
                    scan_layers: bool = True, attention_impl: str = "auto") -> tuple[nn.Module, Any]:
    """Loads an omni_jax checkpoint directory (`checkpoint_dir`: `omni-jax convert`'s, training's final/).

    dtype: parameter and compute dtype ("float32", "bfloat16", ...); stored parameters are
    cast while restoring. mesh: restore every leaf directly into its shards on this mesh,
    placed by the logical-axis rules of `omni_jax.sharding` (no host holds a whole copy).
    scan_layers=False unrolls the language model's and Swin's layers (faster on the CPU, where
    XLA copies a scanned layer's weights; longer compiles): for inference, while training keeps
    them scanned. attention_impl: the attention
    kernels (auto | xla | cudnn | splash, `layers.attention.select_implementation`).
    Returns `(model, params)`: `model.apply({"params": params}, **inputs)`.
    """
    import orbax.checkpoint.experimental.v1 as ocp

    dtype = jnp.dtype(dtype).name
    meta = read_config(path)
    family = registry.FAMILIES[meta["model_type"]]
    # A trained model's config records its training batches' padding; others' may differ.
    stored_config = registry.to_config(with_attention(override_fields(meta["config"], dtype=dtype, param_dtype=dtype,
                                                                      attention_padding="any"), attention_impl))
    abstract = registry.abstract_params(family, stored_config)
    if mesh is None:
        shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
    else:
        shardings = sharding.param_shardings(registry.abstract_params(family, stored_config, boxed=True), mesh)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, jnp.dtype(dtype), sharding=sh),
                          abstract, shardings)
    params = ocp.load(Path(path).absolute() / PARAMS_DIR, target)  # orbax takes absolute paths only
    if scan_layers:
        return registry.build(family, stored_config), params
    config = registry.to_config(override_fields(stored_config.to_dict(), scan_layers=False))
    return registry.build(family, config), unstack_layers(params, registry.abstract_params(family, config))


def save_pretrained(path: str | os.PathLike, config: Any, params: Any, tokenizer_dir: str | os.PathLike,
                    provenance: dict[str, Any]) -> Path:
    """An Omni-Emotion checkpoint at `path` (every parameter, the model config, the tokenizer
    files of `tokenizer_dir`) that `load_pretrained`, `omni-jax export`, `eval` and a next
    training phase take; written by every process (orbax) into a temporary folder that
    process 0 renames, so `path` is complete or absent."""
    import orbax.checkpoint.experimental.v1 as ocp
    from jax.experimental import multihost_utils

    path = Path(path).absolute()  # orbax takes absolute paths only
    tmp = path.with_name(f".{path.name}.partial")
    if jax.process_index() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    multihost_utils.sync_global_devices(f"save_pretrained: folder {path}")
    ocp.save(tmp / PARAMS_DIR, params)
    if jax.process_index() == 0:
        meta = {"model_type": "omni_emotion", "config": config.to_dict(), "hf_config": {},
                "source_format": "trained", "dtype": "source", **provenance}
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        for file in Path(tokenizer_dir).iterdir():
            shutil.copy2(file, tmp / file.name)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    multihost_utils.sync_global_devices(f"save_pretrained: written {path}")
    return path
