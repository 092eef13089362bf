"""`load_pretrained`: a converted directory → (Flax module, parameter tree)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from omni_jax import registry, sharding
from omni_jax.conversion.engine import PARAMS_DIR, read_converted_config


def _with_dtype(config: dict[str, Any], dtype: str) -> dict[str, Any]:
    """Sets the compute dtype (and keeps param dtype in step) in every sub-config."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out[key] = _with_dtype(value, dtype)
        elif key in ("dtype", "param_dtype"):
            out[key] = dtype
        else:
            out[key] = value
    return out


def load_pretrained(path: str | os.PathLike, dtype: str | Any = "float32",
                    mesh: jax.sharding.Mesh | None = None) -> tuple[nn.Module, Any]:
    """Loads a directory written by `convert/hf_to_orbax.py`.

    dtype: parameter and compute dtype ("float32", "bfloat16", ...); stored parameters are
    cast while restoring. mesh: restore every leaf directly into its shards on this mesh,
    placed by the logical-axis rules of `omni_jax.sharding` (no host holds a whole copy).
    Returns `(model, params)`: `model.apply({"params": params}, **inputs)`.
    """
    import orbax.checkpoint.experimental.v1 as ocp

    dtype = jnp.dtype(dtype).name
    meta = read_converted_config(path)
    family = registry.FAMILIES[meta["model_type"]]
    config = registry.to_config(_with_dtype(meta["config"], dtype))
    model = registry.build(family, config)
    abstract = registry.abstract_params(family, config)
    if mesh is None:
        shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
    else:
        shardings = sharding.param_shardings(registry.abstract_params(family, config, boxed=True), mesh)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, jnp.dtype(dtype), sharding=sh),
                          abstract, shardings)
    params = ocp.load(Path(path) / PARAMS_DIR, target)
    return model, params
