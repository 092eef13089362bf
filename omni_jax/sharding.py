"""The device mesh, and one table of logical-axis rules that maps every parameter and
activation name to its axes.

Mesh axes: "data" (batch), "fsdp" (batch and parameter shards), "tensor" (heads / MLP /
vocab). Any of them may be 1. `make_mesh` lays them onto the hardware: inside a TPU slice (or
a GPU node) along the torus (ICI), and across slices or nodes (DCN) by a second, outer shape.
"""
from __future__ import annotations

import collections
import contextlib
import math
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from omni_jax.errors import InputError

MESH_AXES = ("data", "fsdp", "tensor")
DCN_FIELDS = tuple(f"dcn_{axis}" for axis in MESH_AXES)  # cfg.mesh's DCN sizes, in MESH_AXES order

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


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[Any] | None = None, *,
              dcn_data: int = 1, dcn_fsdp: int = 1, dcn_tensor: int = 1,
              allow_split_physical_axes: bool = False) -> Mesh:
    """The (data, fsdp, tensor) mesh of `devices` (default: all of them), laid onto the hardware.

    `data`, `fsdp`, `tensor` are the ICI shape: the axes' sizes inside one TPU slice or one
    node (one may be -1: the rest of its devices). `dcn_data`, `dcn_fsdp`, `dcn_tensor` split
    the axes across slices (TPU: the devices' `slice_index`) or nodes (other platforms: their
    processes, one per node), so each axis of the mesh has ICI × DCN positions, DCN-major: the
    j-th run of `ici` positions along an axis is the j-th slice along it (`dcn_granules`).
    Inside a slice `jax.experimental.mesh_utils` places the axes on the torus, tensor first
    (the most traffic) on whole sides of it; an ICI size that is no product of the torus'
    sides is refused unless `allow_split_physical_axes`, which splits a side (the rings along
    it lose their wraparound link). CPU devices keep the order given (a plain reshape), as do
    TPU devices that fill no whole cuboid of the torus (a caller's subset)."""
    devices = list(jax.devices() if devices is None else devices)
    ici, dcn = [data, fsdp, tensor], [dcn_data, dcn_fsdp, dcn_tensor]
    for field, size in zip(MESH_AXES + DCN_FIELDS, ici + dcn):
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not (
                size >= 1 or size == -1 and field in MESH_AXES):
            allowed = "a whole number ≥ 1 or -1 (the remaining devices)" if field in MESH_AXES else \
                "a whole number ≥ 1 (slices or nodes along that axis; -1 is for data, fsdp, tensor only)"
            raise InputError(f"mesh.{field} must be {allowed}, got {size!r}")
    if ici.count(-1) > 1:
        raise InputError(f"mesh: at most one of data, fsdp, tensor may be -1, got data={data} fsdp={fsdp} "
                         f"tensor={tensor}")
    tpu = devices[0].platform == "tpu"
    unit, units = ("slice", "slices") if tpu else ("process", "processes")
    granules = _granules(devices, "slice_index" if tpu else "process_index")
    slices = math.prod(dcn)
    # several TPU slices need a DCN shape (mesh_utils lays out one torus at a time); several
    # processes elsewhere may share one ICI shape (a single node, or DCN left unmodelled)
    if (slices > 1 or tpu) and len(granules) != slices:
        raise InputError(f"mesh.dcn_data × dcn_fsdp × dcn_tensor = {' × '.join(map(str, dcn))} = {slices}, but the "
                         f"{len(devices)} devices are in {len(granules)} {units}: the product must be that count")
    if slices > 1 and len({len(g) for g in granules}) > 1:
        raise InputError(f"mesh: the {units} hold different numbers of devices ({sorted(len(g) for g in granules)}); "
                         f"DCN axes need equal ones")
    per = len(devices) // slices
    known = math.prod(s for s in ici if s != -1)
    ici = [per // known if s == -1 else s for s in ici]
    if math.prod(ici) != per:
        need = f"a multiple of {known}" if -1 in (data, fsdp, tensor) else known
        where = f" per {unit} ({len(devices)} in {slices} {units})" if slices > 1 else ""
        raise InputError(f"mesh data={data} fsdp={fsdp} tensor={tensor} needs {need} devices{where}, found {per}")
    try:
        if slices > 1:
            grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=not tpu,
                                                        allow_split_physical_axes=allow_split_physical_axes)
        elif tpu and not _whole_cuboid(devices):
            grid = np.asarray(devices).reshape(ici)
        else:
            grid = mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=allow_split_physical_axes)
    except NotImplementedError as error:  # mesh_utils: no assignment to whole sides of the torus
        sides = " × ".join(map(str, _torus(granules[0])))
        raise InputError(f"mesh data={ici[0]} fsdp={ici[1]} tensor={ici[2]} does not lie on whole sides of the "
                         f"{sides} torus of {devices[0].device_kind}: make each size a product of some of its sides, "
                         f"or set mesh.allow_split_physical_axes=True (rings along a split side lose their "
                         f"wraparound link)") from error
    return Mesh(grid, MESH_AXES)


def dcn_granules(shape: Sequence[int], dcn: Sequence[int]) -> np.ndarray:
    """For each position of a mesh of axis sizes `shape` that `make_mesh` built with DCN sizes
    `dcn` (both in MESH_AXES order): the index of its slice or node, in slice_index (process)
    order. On simulated devices it is the slice the position stands for (`omni-jax plan`)."""
    shape, dcn = tuple(shape), tuple(dcn)
    if any(size % n for size, n in zip(shape, dcn)):
        raise InputError(f"mesh axis sizes {dict(zip(MESH_AXES, shape))} are not multiples of the DCN sizes "
                         f"{dict(zip(MESH_AXES, dcn))}")
    ici = [size // n for size, n in zip(shape, dcn)]
    return np.ravel_multi_index(tuple(index // n for index, n in zip(np.indices(shape), ici)), dcn)


def _granules(devices: Sequence[Any], key: str) -> list[list[Any]]:
    """`devices` grouped by `key` (slice_index or process_index), in its order."""
    groups = collections.defaultdict(list)
    for device in devices:
        groups[getattr(device, key, 0)].append(device)
    return [groups[k] for k in sorted(groups)]


def _torus(devices: Sequence[Any]) -> tuple[int, ...]:
    """The sides of the cuboid of chips that TPU `devices` span."""
    coords = np.array([d.coords for d in devices])
    return tuple(int(n) for n in coords.max(0) - coords.min(0) + 1)


def _whole_cuboid(devices: Sequence[Any]) -> bool:
    """Whether TPU `devices` fill their cuboid of chips, each chip's cores alike (mesh_utils
    needs that: it lays the mesh on the cuboid)."""
    chips = {(tuple(d.coords), d.core_on_chip) for d in devices}
    return len(chips) == len(devices) == math.prod(_torus(devices)) * len({d.core_on_chip for d in devices})


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
