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

from omni_jax.errors import InputError

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
    ("conv_out", None),  # the face detector's convolutions: 1.7 MB (MobileNet) to 105 MB, replicated
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_replica_batch", "data"),  # the batch split over data only (the embedding lookup)
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
        raise InputError("at most one mesh axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if int(np.prod(sizes)) != len(devices):
        raise InputError(f"mesh data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} needs {np.prod(sizes)} devices, "
                         f"{len(devices)} available")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def _axes(entry: Any) -> tuple[str, ...]:
    return (entry,) if isinstance(entry, str) else tuple(entry or ())


def _ways(axes: Sequence[str], mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in axes], dtype=np.int64))


def fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh, fixed: Sequence[bool] = ()) -> PartitionSpec:
    """The rules' `spec` made to divide `shape`: each dimension keeps the subset of its mesh
    axes that splits it most ways and divides it; an axis left over moves to the largest
    dimension it still divides, whole ones first, never to a `fixed` one (the scanned layers:
    a scan slicing a split dimension would gather all of it). So tensor=8 on 4 KV heads splits
    head_dim. An axis that divides nothing stays unused (`padded_shape`)."""
    dims = [_axes(e) for e in tuple(spec) + (None,) * (len(shape) - len(spec))]
    fixed = tuple(fixed) + (False,) * (len(shape) - len(fixed))
    left = []
    for i, (size, axes) in enumerate(zip(shape, dims)):
        subsets = [tuple(a for j, a in enumerate(axes) if mask >> j & 1) for mask in range(2 ** len(axes))]
        dims[i] = max((sub for sub in subsets if size % _ways(sub, mesh) == 0),
                      key=lambda sub: (_ways(sub, mesh), len(sub)))  # size-1 axes kept: the rules' spec
        left += [a for a in axes if a not in dims[i] and mesh.shape[a] > 1]
    for axis in sorted(left, key=lambda a: -mesh.shape[a]):
        fits = [i for i, size in enumerate(shape)
                if not fixed[i] and size % (_ways(dims[i], mesh) * mesh.shape[axis]) == 0]
        if fits:
            best = max(fits, key=lambda i: (not dims[i], shape[i]))
            dims[best] = dims[best] + (axis,)
    return PartitionSpec(*(None if not d else d[0] if len(d) == 1 else d for d in dims))


def padded_shape(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> tuple[int, ...]:
    """`shape` with each dimension rounded up to a multiple of its mesh axes in `spec`."""
    dims = tuple(spec) + (None,) * (len(shape) - len(spec))
    return tuple(-(-size // _ways(_axes(d), mesh)) * _ways(_axes(d), mesh) for size, d in zip(shape, dims))


MAX_PADDING = 0.125


def stored_layout(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh,
                  fixed: Sequence[bool] = ()) -> tuple[tuple[int, ...], PartitionSpec]:
    """(shape, spec) to store a leaf that only a jitted step reads, which slices the padding
    off (the frozen towers): the fitted spec where it splits the leaf as many ways as the
    rules' `spec`; else the rules' spec on the shape padded to divide, if that adds at most
    MAX_PADDING of the leaf (SigLIP's 1152-wide kernels on fsdp=256: 1280, split 256 ways)."""
    fitted = fit_spec(spec, shape, mesh, fixed)
    padded = padded_shape(spec, shape, mesh)
    if split_ways(fitted, mesh) >= split_ways(spec, mesh) or np.prod(padded) > (1 + MAX_PADDING) * np.prod(shape):
        return tuple(shape), fitted
    return padded, spec


def split_ways(spec: PartitionSpec, mesh: Mesh) -> int:
    """Into how many parts `spec` splits an array on `mesh`."""
    return _ways([a for entry in spec for a in _axes(entry)], mesh)


def _per_leaf(layout: Any, boxed_abstract_params: Any, rules: Sequence[tuple[str, Any]]) -> Any:
    """`layout(rules' spec, shape, dtype, scanned dims)` for every leaf of a boxed parameter tree."""
    logical = nn.get_partition_spec(boxed_abstract_params)
    return jax.tree.map(lambda names, spec, s: layout(spec, s.shape, s.dtype, [n == "layers" for n in names]),
                        logical, nn.logical_to_mesh(logical, rules), nn.unbox(boxed_abstract_params),
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def param_shardings(boxed_abstract_params: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> Any:
    """NamedShardings for a parameter tree that still carries its logical-axis boxes
    (e.g. `jax.eval_shape(model.init, ...)["params"]`), each spec fitted to its shape."""
    return _per_leaf(lambda spec, shape, _, scanned: NamedSharding(mesh, fit_spec(spec, shape, mesh, scanned)),
                     boxed_abstract_params, rules)


def stored_params(boxed_abstract_params: Any, mesh: Mesh,
                  rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> Any:
    """ShapeDtypeStructs of the parameters as a step that only reads them stores them
    (`stored_layout`: padded where nothing else splits them), with their shardings."""
    def layout(spec, shape, dtype, scanned):
        stored_shape, stored_spec = stored_layout(spec, shape, mesh, scanned)
        return jax.ShapeDtypeStruct(stored_shape, dtype, sharding=NamedSharding(mesh, stored_spec))
    return _per_leaf(layout, boxed_abstract_params, rules)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> Iterator[None]:
    """The mesh and logical-axis rules a traced sharded function needs (`jax.set_mesh`: the
    legacy `with mesh:` would make the activations' logical constraints no-ops)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield
