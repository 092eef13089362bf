"""Ahead-of-time plan of a sharded train step: compile it for a mesh without any weights.

Parameters, optimizer state and the batch are `jax.ShapeDtypeStruct`s carrying their target
shardings; the step is lowered and compiled for that mesh (simulated CPU devices will do), and
XLA's memory analysis gives the per-device bytes. FLOPs are counted on the step's jaxpr, not
taken from XLA's cost analysis, which counts a loop body once: the scanned layers, the loss
chunks and the microbatches would be undercounted by their trip counts.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.extend as jex
import jax.numpy as jnp
import ml_collections
import numpy as np

from omni_jax import registry, sharding
from omni_jax.models import whisper
from omni_jax.models.omni_emotion import placeholder_counts
from omni_jax.train.step import make_optimizer, train_step, trainable_labels


def abstract_batch(cfg: ml_collections.ConfigDict, batch: int, seq: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes of one training batch of `batch` clips padded to `seq` tokens."""
    needed = sum(placeholder_counts(cfg).values()) + 4  # + the four modality tokens
    if seq < needed:
        raise ValueError(f"--seq {seq} is shorter than the {needed} multimodal positions of one clip")
    f, size, face = cfg.num_frames, cfg.vision.image_size, cfg.face.swin.image_size
    spec = jax.ShapeDtypeStruct
    return {"input_ids": spec((batch, seq), jnp.int32), "attention_mask": spec((batch, seq), jnp.int32),
            "labels": spec((batch, seq), jnp.int32),
            "pixel_values_videos": spec((batch, f, size, size, cfg.vision.num_channels), jnp.float32),
            "face_pixels": spec((batch, f, face, face, cfg.face.swin.num_channels), jnp.float32),
            "input_features": spec((batch, cfg.audio_windows, cfg.audio.num_mel_bins,
                                    whisper.input_frames(cfg.audio)), jnp.float32),
            "has_video": spec((batch,), jnp.bool_), "has_face": spec((batch,), jnp.bool_),
            "has_audio": spec((batch,), jnp.bool_)}


def sharded_params(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Any:
    """The parameter tree as ShapeDtypeStructs carrying their shardings on `mesh` (no weights)."""
    boxed = registry.abstract_params(registry.FAMILIES["omni_emotion"], cfg, boxed=True)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.unbox(boxed),
                        sharding.param_shardings(boxed, mesh))


def bytes_per_device(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
    return sum(_shard_bytes(s) for s in jax.tree.leaves(tree))


def optimizer_shardings(opt_state: Any, params: Any, mesh: jax.sharding.Mesh) -> Any:
    """Adam's moments placed like their parameters; counters and the like replicated. (XLA does
    not carry parameter shardings into `init`'s zeros: left alone they come out replicated.)

    A moment is recognised by its key path ending in a parameter's path, with its shape."""
    by_path = {tuple(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def place(path, leaf):
        keys = tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path)
        for start in range(len(keys)):
            param = by_path.get(keys[start:])
            if param is not None and param.shape == leaf.shape:
                return param.sharding
        return replicated

    return jax.tree_util.tree_map_with_path(place, opt_state)


def plan_train_step(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, batch: int, seq: int,
                    phase: str = "instruction_tuning", microbatches: int = 1) -> dict[str, Any]:
    """Compiles the phase's train step for `mesh` (the batch accumulated over `microbatches`);
    returns per-device bytes and FLOPs per step."""
    model = registry.build(registry.FAMILIES["omni_emotion"], cfg)
    params = sharded_params(cfg, mesh)
    param_shardings = jax.tree.map(lambda s: s.sharding, params)
    optimizer = make_optimizer(params, phase)
    labels = trainable_labels(params, phase)
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    inputs = abstract_batch(cfg, batch, seq)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
        opt_state = jax.eval_shape(optimizer.init, params)
        opt_shardings = optimizer_shardings(opt_state, params, mesh)
        step = jax.jit(functools.partial(train_step, model, optimizer, labels, microbatches=microbatches),
                       in_shardings=(param_shardings, opt_shardings, jax.tree.map(lambda _: data, inputs)),
                       out_shardings=(param_shardings, opt_shardings, None), donate_argnums=(0, 1))
        traced = step.trace(params, opt_state, inputs)
        compiled = traced.lower().compile()
    memory = compiled.memory_analysis()
    devices = mesh.devices.size
    return {"devices": devices, "mesh": dict(mesh.shape), "batch": batch, "microbatches": microbatches, "seq": seq,
            "phase": phase, "remat_policy": cfg.text.remat_policy,
            "params_bytes_per_device": bytes_per_device(params),
            "optimizer_bytes_per_device": bytes_per_device(jax.tree.map(
                lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), opt_state, opt_shardings)),
            "temp_bytes_per_device": int(memory.temp_size_in_bytes),
            "argument_bytes_per_device": int(memory.argument_size_in_bytes),
            "flops_per_step": matmul_flops(traced.jaxpr.jaxpr)}


def matmul_flops(jaxpr: jex.core.Jaxpr) -> float:
    """FLOPs of the matrix products and convolutions of `jaxpr` (all devices together):
    sub-jaxprs included, a scan body times its length, the forward passes the backward
    recomputes (remat) where they occur, a cond's costliest branch. Elementwise work is left
    out (a few % of a transformer's)."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in contracting])
        elif name == "conv_general_dilated":
            kernel = eqn.invars[1].aval.shape  # out features × in features per group × window
            out_features = kernel[eqn.params["dimension_numbers"].rhs_spec[0]]
            total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod(kernel) / out_features
        elif name == "cond":
            total += max(matmul_flops(branch.jaxpr) for branch in eqn.params["branches"])
            continue
        repeats = eqn.params["length"] if name == "scan" else 1
        total += repeats * sum(matmul_flops(sub) for sub in jex.core.jaxprs_in_params(eqn.params))
    return total


def _shard_bytes(spec: jax.ShapeDtypeStruct) -> int:
    shard = spec.sharding.shard_shape(spec.shape) if spec.sharding is not None else spec.shape
    return int(np.prod(shard, dtype=np.int64)) * jnp.dtype(spec.dtype).itemsize
