"""Ahead-of-time plan of a sharded train step: compile it for a mesh without any weights.

Parameters, optimizer state and the batch are `jax.ShapeDtypeStruct`s carrying their target
shardings; the step is lowered and compiled for that mesh (simulated CPU devices will do), and
XLA's memory analysis gives the per-device bytes. FLOPs are counted on the step's jaxpr
(`omni_jax.flops`: XLA's cost analysis counts a loop body once). Collective bytes are read from
the compiled HLO, each loop body times its trip count; compiled for the CPU they are upper
bounds for GPUs/TPUs (XLA:CPU widens bf16 collectives to f32 and reduces gradients with
all-reduce rather than reduce-scatter).
"""
from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from omni_jax.errors import InputError
from omni_jax.flops import matmul_flops
from omni_jax.modality_tokens import audio_input_frames, parse_modalities, placeholder_counts
from omni_jax.train.step import make_trainer, training_model_config


def abstract_batch(cfg: ml_collections.ConfigDict, batch: int, seq: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes of one training batch of `batch` clips padded to `seq` tokens, with the media
    of `cfg.train.modalities` (as the input pipeline gives them)."""
    modalities = parse_modalities(cfg.train.modalities)
    video, audio = bool({"v", "f"} & set(modalities)), "a" in modalities
    model = cfg.model
    counts = placeholder_counts(model)
    needed = video * (counts["video"] + 2) + audio * (counts["audio"] + 2)
    if seq < needed:
        raise InputError(f"--seq {seq} is shorter than the {needed} multimodal positions of one clip")
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


def plan_train_step(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, batch: int, seq: int) -> dict[str, Any]:
    """Compiles the train step of `cfg.train` (phase, microbatches, remat, dtypes, optimizer)
    for `mesh`, as `omni-jax train` builds it; returns per-device bytes and FLOPs per step."""
    trainer = make_trainer(training_model_config(cfg), mesh, cfg.train, total_steps=1000)
    inputs = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=trainer.batch_sharding),
                          abstract_batch(cfg, batch, seq))
    with trainer.activate():
        traced = trainer.step.trace(trainer.abstract_state, trainer.abstract_frozen, inputs)
        compiled = traced.lower().compile()
    memory = compiled.memory_analysis()
    state = trainer.abstract_state
    params = (state["trainable"], trainer.abstract_frozen)
    return {"devices": mesh.devices.size, "mesh": dict(mesh.shape), "batch": batch,
            "microbatches": cfg.train.microbatches, "seq": seq, "phase": cfg.train.phase,
            "remat_policy": cfg.train.remat, "compute_dtype": cfg.train.compute_dtype,
            "params_bytes_per_device": bytes_per_device(params),
            "replicated_params_bytes_per_device": replicated_bytes_per_device(params, mesh),
            "optimizer_bytes_per_device": bytes_per_device(state["opt_state"]),
            "temp_bytes_per_device": int(memory.temp_size_in_bytes),
            "argument_bytes_per_device": int(memory.argument_size_in_bytes),
            "flops_per_step": matmul_flops(traced.jaxpr.jaxpr),
            **{f"{kind}_bytes_per_device": n for kind, n in collective_bytes(compiled.as_text()).items()}}


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
            memo[computation] = _collectives_in(computations.get(computation, ()), visit)
        return memo[computation]

    return visit(entry) if entry else dict.fromkeys(COLLECTIVES, 0)


def _collectives_in(lines, visit) -> dict[str, int]:
    totals = dict.fromkeys(COLLECTIVES, 0)
    add = lambda counts, times=1: totals.update({k: totals[k] + times * counts[k] for k in COLLECTIVES})
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
            totals[kind] += max(operand_bytes, result_bytes)
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
