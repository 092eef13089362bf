"""One table of logical-axis rules maps every parameter and activation name to mesh axes.

Mesh axes: "data" (batch), "fsdp" (batch and parameter shards), "tensor" (heads / MLP /
vocab). Any of them may be 1.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("vision_embed", "fsdp"),
    ("audio_embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_vocab", "tensor"),
)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one size may be -1 to take the remaining devices."""
    devices = list(devices or jax.devices())
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError("at most one mesh axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} needs {np.prod(sizes)} devices, "
                         f"{len(devices)} available")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def _divisible(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """Replicates any dimension the mesh axes do not divide (e.g. 4 KV heads on tensor=8)."""
    dims = []
    for size, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        ways = int(np.prod([mesh.shape[n] for n in names])) if names else 1
        dims.append(axes if size % ways == 0 else None)
    return PartitionSpec(*dims)


def param_shardings(boxed_abstract_params: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> Any:
    """NamedShardings for a parameter tree that still carries its logical-axis boxes
    (e.g. `jax.eval_shape(model.init, ...)["params"]`)."""
    logical = nn.get_partition_spec(boxed_abstract_params)
    mesh_specs = nn.logical_to_mesh(logical, rules)
    shapes = nn.unbox(boxed_abstract_params)
    return jax.tree.map(lambda spec, s: NamedSharding(mesh, _divisible(spec, s.shape, mesh)), mesh_specs, shapes,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> Iterator[None]:
    """The mesh and logical-axis rules a traced sharded function needs (`jax.set_mesh`: the
    legacy `with mesh:` would make the activations' logical constraints no-ops)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield
