"""Ahead-of-time plan of a sharded train step: compile it for a mesh without any weights.

Parameters, optimizer state and the batch are `jax.ShapeDtypeStruct`s carrying their target
shardings; the step is lowered and compiled for that mesh (simulated CPU devices will do), and
XLA's memory analysis gives the per-device bytes. FLOPs are counted on the step's jaxpr
(`omni_jax.flops`: XLA's cost analysis counts a loop body once), model FLOPs (MFU's) and
hardware FLOPs (also the rematerialised forwards: HFU's). Collective bytes are read from
the compiled HLO, each loop body times its trip count; compiled for the CPU they are upper
bounds for GPUs/TPUs (XLA:CPU widens bf16 collectives to f32 and reduces gradients with
all-reduce rather than reduce-scatter).
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from omni_jax import xla_cpu
from omni_jax.config_flags import AT_LEAST_1, check_ranges
from omni_jax.errors import InputError
from omni_jax.flops import count_flops
from omni_jax.modality_tokens import audio_input_frames, parse_modalities, placeholder_counts
from omni_jax.progress import QUIET, Progress
from omni_jax.sharding import DCN_FIELDS, MESH_AXES, dcn_granules, make_mesh
from omni_jax.train.step import FIELDS as TRAIN_FIELDS
from omni_jax.train.step import check_batch, make_trainer, training_model_config


def abstract_batch(cfg: ml_collections.ConfigDict, batch: int, seq: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes of one training batch of `batch` clips padded to `seq` tokens, with the media
    of `cfg.train.modalities` (as the input pipeline gives them)."""
    modalities = parse_modalities(cfg.train.modalities)
    video, audio = bool({"v", "f"} & set(modalities)), "a" in modalities
    model = cfg.model
    counts = placeholder_counts(model)
    needed = video * (counts["video"] + 2) + audio * (counts["audio"] + 2)
    if seq < needed:
        raise InputError(f"--config.plan.seq_len={seq} is shorter than the {needed} multimodal positions of one clip")
    f, size, face = model.num_frames, model.vision.image_size, model.face.swin.image_size
    spec = jax.ShapeDtypeStruct
    tokens = {key: spec((batch, seq), jnp.int32) for key in ("input_ids", "attention_mask", "labels")}
    if video:
        tokens.update(pixel_values_videos=spec((batch, f, size, size, model.vision.num_channels), jnp.float32),
                      face_pixels=spec((batch, f, face, face, model.face.swin.num_channels), jnp.float32),
                      has_video=spec((batch,), jnp.bool_), has_face=spec((batch,), jnp.bool_))
    if audio:
        tokens.update(input_features=spec((batch, model.audio_windows, model.audio.num_mel_bins,
                                           audio_input_frames(model.audio)), jnp.float32),
                      has_audio=spec((batch,), jnp.bool_))
    return tokens


def bytes_per_device(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
    return sum(_shard_bytes(s) for s in jax.tree.leaves(tree))


def replicated_bytes_per_device(tree: Any, mesh: jax.sharding.Mesh) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs beyond an even split of
    each leaf over the parameter axes (fsdp × tensor; the data axis holds copies by design)."""
    split = mesh.shape["fsdp"] * mesh.shape["tensor"]
    full = lambda s: int(np.prod(s.shape, dtype=np.int64)) * jnp.dtype(s.dtype).itemsize
    return sum(max(0, _shard_bytes(s) - full(s) // split) for s in jax.tree.leaves(tree))


def plan_train_step(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, batch: int, seq: int,
                    dcn: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Compiles the train step of `cfg.train` (phase, microbatches, remat, dtypes, optimizer)
    for `mesh`, as `omni-jax train` builds it; returns per-device bytes and FLOPs per step.
    `dcn` ({"data": 2}, ...; absent axes 1): how many slices or nodes each mesh axis spans, the
    mesh laid out as `sharding.make_mesh` lays one out (`dcn_granules`); the `dcn_*` fields say
    which collectives cross between them."""
    dcn = dict(dcn or {})
    if set(dcn) - set(MESH_AXES):
        raise InputError(f"dcn: unknown mesh axes {sorted(set(dcn) - set(MESH_AXES))}, expected some of {MESH_AXES}")
    dcn_shape = [dcn.get(axis, 1) for axis in MESH_AXES]
    granules = dcn_granules([mesh.shape[axis] for axis in MESH_AXES], dcn_shape).reshape(-1)
    trainer = make_trainer(training_model_config(cfg), mesh, cfg.train, total_steps=1000)
    inputs = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=trainer.batch_sharding),
                          abstract_batch(cfg, batch, seq))
    with trainer.activate():
        traced = trainer.step.trace(trainer.abstract_state, trainer.abstract_frozen, inputs)
        compiled = traced.lower().compile()
    memory, hlo = compiled.memory_analysis(), compiled.as_text()
    state = trainer.abstract_state
    params = (state["trainable"], trainer.abstract_frozen)
    flops = count_flops(traced.jaxpr.jaxpr)
    return {"devices": mesh.devices.size, "mesh": dict(mesh.shape), "batch": batch,
            "microbatches": cfg.train.microbatches, "seq": seq, "phase": cfg.train.phase,
            "remat_policy": cfg.train.remat, "compute_dtype": cfg.train.compute_dtype,
            "params_bytes_per_device": bytes_per_device(params),
            "replicated_params_bytes_per_device": replicated_bytes_per_device(params, mesh),
            "optimizer_bytes_per_device": bytes_per_device(state["opt_state"]),
            "temp_bytes_per_device": int(memory.temp_size_in_bytes),
            "argument_bytes_per_device": int(memory.argument_size_in_bytes),
            "model_flops_per_step": flops.model, "hardware_flops_per_step": flops.hardware,
            **{f"{kind}_bytes_per_device": n for kind, n in collective_bytes(hlo).items()},
            "ici_mesh": {axis: mesh.shape[axis] // n for axis, n in zip(MESH_AXES, dcn_shape)},
            "dcn_mesh": dict(zip(MESH_AXES, dcn_shape)),
            "dcn_axes": [axis for axis, n in zip(MESH_AXES, dcn_shape) if n > 1],
            **{f"dcn_{kind}_bytes_per_device": n for kind, n in dcn_collective_bytes(hlo, granules).items()}}


def mesh_devices(mesh: ml_collections.ConfigDict, devices: int) -> int:
    """How many devices `mesh` (cfg.mesh: ICI sizes, one may be -1, and DCN sizes) spans: its
    product, or `devices` where an axis takes the rest."""
    ici, dcn = [mesh[axis] for axis in MESH_AXES], [mesh[field] for field in DCN_FIELDS]
    return devices if -1 in ici else math.prod(ici) * math.prod(dcn)


def run(cfg: ml_collections.ConfigDict, *, progress: Progress = QUIET) -> dict[str, Any]:
    """`omni-jax plan`: the config's train step compiled for cfg.mesh on simulated CPU devices,
    at plan.seq_len tokens per clip and the config's global batch; bytes (also in GiB) and FLOPs
    per device and step, collectives, what crosses DCN."""
    check_ranges(cfg, {"plan.seq_len": AT_LEAST_1, "plan.devices": AT_LEAST_1}, TRAIN_FIELDS)
    devices = mesh_devices(cfg.mesh, cfg.plan.devices)
    xla_cpu.simulate_devices(devices)
    # the simulated devices stand for the slices by position, as make_mesh lays them out (DCN-major)
    dcn = {axis: cfg.mesh[f"dcn_{axis}"] for axis in MESH_AXES}
    per_slice = devices // math.prod(dcn.values())
    known = math.prod(cfg.mesh[axis] for axis in MESH_AXES if cfg.mesh[axis] != -1)
    ici = {axis: per_slice // known if cfg.mesh[axis] == -1 else cfg.mesh[axis] for axis in MESH_AXES}
    with progress.stage(f"compiling the train step for {devices} simulated devices"):
        mesh = make_mesh(**{axis: ici[axis] * dcn[axis] for axis in MESH_AXES}, devices=jax.devices("cpu")[:devices])
        check_batch(cfg.train.global_batch_size, cfg.train.microbatches, mesh)
        result = plan_train_step(cfg, mesh, cfg.train.global_batch_size, cfg.plan.seq_len, dcn=dcn)
    gib = lambda n: f"{n / 2**30:.3f} GiB"
    return {**{k: v for k, v in result.items() if not k.endswith("bytes_per_device")},
            **{k.replace("_bytes", ""): gib(v) for k, v in result.items() if k.endswith("bytes_per_device")},
            **{k: v for k, v in result.items() if k.endswith("bytes_per_device")}}


COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_COMPUTATION = re.compile(r"^(ENTRY )?%([\w.-]+) \(")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%(\S+) = (.*?) ([a-z][a-z0-9-]*)\((.*?)\)(.*)")
_ARRAY = re.compile(r"\b(pred|[a-z]+(\d+)\w*)\[([\d,]*)\]")
_CALLED = re.compile(r"\b(?:body|to_apply|calls)=%([\w.-]+)")
_BRANCHES = re.compile(r"(?:branch_computations=\{([^}]*)\}|true_computation=%([\w.-]+), "
                       r"false_computation=%([\w.-]+))")
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """Bytes one device moves per step in each kind of collective of a compiled (partitioned)
    HLO module: each collective's whole buffer (an all-gather's result, a reduce-scatter's
    operand, an all-reduce's operand) times the trip counts of the loops around it; of a
    conditional's branches, the costliest."""
    return _walk(hlo_text, COLLECTIVES, lambda kind, buffer, attributes: {kind: buffer})


def dcn_collective_bytes(hlo_text: str, granules: np.ndarray) -> dict[str, int]:
    """What of `collective_bytes` crosses DCN, `granules[i]` the slice (or node) of partition i
    (`sharding.dcn_granules`): per kind, the whole buffers of the collectives whose device
    groups span more than one slice; and "sent", an estimate of the bytes one device sends
    over DCN, each such collective taken as run hierarchically (within each slice over ICI,
    and between the g slices of a group of n devices on 1/k of the buffer, k = n/g per slice,
    by rings): an all-gather or reduce-scatter sends (g-1)/g of its 1/k share,
    (g-1)·B/n; an all-reduce twice that; an all-to-all the (g-1)/g of its buffer addressed to
    other slices; a collective-permute whose pairs cross its buffer. Loops and branches as in
    `collective_bytes`."""
    def measure(kind: str, buffer: int, attributes: str) -> dict[str, int]:
        groups = device_groups(attributes, len(granules))
        spanned = max(len(set(granules[group])) for group in groups)
        if spanned == 1:
            return {}
        n = max(len(group) for group in groups)
        sent = {"all-reduce": 2 * (spanned - 1) * buffer // n, "all-to-all": (spanned - 1) * buffer // spanned,
                "collective-permute": buffer}.get(kind, (spanned - 1) * buffer // n)
        return {kind: buffer, "sent": sent}

    return _walk(hlo_text, COLLECTIVES + ("sent",), measure)


_GROUP_LISTS = re.compile(r"(?:replica_groups|source_target_pairs)=\{((?:\{[\d,]*\},?)*)\}")
_GROUP_IOTA = re.compile(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?")
_GROUP_MESH = re.compile(r"replica_groups=mesh\[([^\]]*)\](?:, device_ids=\(\[([\d,]+)\](?:T\(([\d,]+)\))?\))? "
                         r"\{([^}]*)\}")
_MESH_AXIS = re.compile(r"'?([^'=,]+)'?=(\d+)")
_GROUP_AXIS = re.compile(r"'?([^':,]+)'?(?::\((\d+)\)(\d+))?")


def device_groups(attributes: str, devices: int) -> list[np.ndarray]:
    """The groups of partition ids of a collective, from its HLO attributes in each form XLA
    prints: lists ("replica_groups={{0,4},{1,5}}", "{}": all `devices`; the pairs of a
    collective-permute), iota ("[2,4]<=[4,2]T(1,0)") and mesh axes ("mesh['a'=4,'b'=2],
    device_ids=([2,4]T(1,0)) {'a'}": the devices that differ in the listed axes, or in a
    sub-axis "'a':(m)s", the s-sized digit of a's index below the m-sized major part)."""
    if match := _GROUP_LISTS.search(attributes):
        groups = [np.array([int(i) for i in group.split(",") if i], dtype=np.int64)
                  for group in re.findall(r"\{([\d,]*)\}", match.group(1))]
        return groups or [np.arange(devices)]
    if match := _GROUP_IOTA.search(attributes):
        count, size, dims, perm = match.groups()
        return list(_iota(dims, perm).reshape(int(count), int(size)))
    if match := _GROUP_MESH.search(attributes):
        axes, dims, perm, grouped = match.groups()
        names, sizes = zip(*((name, int(size)) for name, size in _MESH_AXIS.findall(axes)))
        ids = (_iota(dims, perm) if dims else np.arange(math.prod(sizes))).reshape(-1)
        index = np.indices(sizes).reshape(len(sizes), -1)
        key = index.copy()  # the index with the grouped axes' digits taken out: equal within a group
        for name, major, size in _GROUP_AXIS.findall(grouped):
            axis = names.index(name)
            if major:
                minor = sizes[axis] // (int(major) * int(size))
                key[axis] -= index[axis] // minor % int(size) * minor
            else:
                key[axis] = 0
        _, label = np.unique(key.T, axis=0, return_inverse=True)
        return [ids[label.reshape(-1) == j] for j in range(label.max() + 1)]
    raise ValueError(f"no device groups in a collective's attributes: {attributes[:300]!r}")


def _iota(dims: str, perm: str | None) -> np.ndarray:
    shape = [int(d) for d in dims.split(",")]
    order = [int(p) for p in perm.split(",")] if perm else list(range(len(shape)))
    return np.arange(math.prod(shape)).reshape(shape).transpose(order).reshape(-1)


def _walk(hlo_text: str, keys: tuple[str, ...], measure: Callable[[str, int, str], dict[str, int]]) -> dict[str, int]:
    """`measure(kind, buffer bytes, attributes)` summed over the collectives of an HLO module,
    each times the trip counts of the loops around it; of a conditional's branches, the costliest."""
    computations: dict[str, list[str]] = {}
    entry = name = None
    for line in hlo_text.splitlines():
        if header := _COMPUTATION.match(line):
            name = header.group(2)
            computations[name] = []
            entry = name if header.group(1) else entry
        elif name is not None:
            computations[name].append(line)
    memo: dict[str, dict[str, int]] = {}

    def visit(computation: str) -> dict[str, int]:
        if computation not in memo:
            memo[computation] = _collectives_in(computations.get(computation, ()), visit, keys, measure)
        return memo[computation]

    return visit(entry) if entry else dict.fromkeys(keys, 0)


def _collectives_in(lines, visit, keys, measure) -> dict[str, int]:
    totals = dict.fromkeys(keys, 0)
    add = lambda counts, times=1: totals.update({k: totals[k] + times * counts.get(k, 0) for k in keys})
    shapes: dict[str, str] = {}
    for line in lines:
        if not (match := _INSTRUCTION.match(line)):
            continue
        result, shape, opcode, operands, attributes = match.groups()
        shapes[result] = shape
        kind = opcode.removesuffix("-start")
        if kind in COLLECTIVES:
            operand_bytes = sum(_array_bytes(shapes.get(o.strip().lstrip("%"), "")) for o in operands.split(","))
            # an async start's result holds its operand besides the buffer it fills
            result_bytes = _array_bytes(shape) - (operand_bytes if opcode != kind else 0)
            add(measure(kind, max(operand_bytes, result_bytes), attributes))
        trips = _TRIPS.search(attributes) if opcode == "while" else None
        for called in _CALLED.findall(attributes):
            add(visit(called), int(trips.group(1)) if trips else 1)
        if branches := _BRANCHES.search(attributes):
            names = branches.group(1).split(",") if branches.group(1) else branches.group(2, 3)
            add(max((visit(n.strip().lstrip("%")) for n in names), key=lambda counts: sum(counts.values())))
    return totals


def _array_bytes(shape: str) -> int:
    """Bytes of the arrays in an HLO shape ("f32[4,64]{1,0}", "(bf16[8], pred[])")."""
    return sum(int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64)) * max(1, int(bits or 8) // 8)
               for _, bits, dims in _ARRAY.findall(shape))


def _shard_bytes(spec: jax.ShapeDtypeStruct) -> int:
    shard = spec.sharding.shard_shape(spec.shape) if spec.sharding is not None else spec.shape
    return int(np.prod(shard, dtype=np.int64)) * jnp.dtype(spec.dtype).itemsize
