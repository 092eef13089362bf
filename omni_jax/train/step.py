"""The sharded Omni-Emotion train step, built one way for `train`, `plan`, the demo and the tests.

The paper's three phases (§4.4) train different subtrees (`PHASES`); the rest is frozen. The
parameters are split by the phase's `trainable_mask` into two trees: `state["trainable"]`,
which the optimizer updates and checkpoints keep (with the Adam moments, the step and the
count of skipped steps), and `frozen`, passed to the step untouched, never differentiated,
never checkpointed (it comes back from the base checkpoint on resume). Phases 1 and 2 thus
hold and save Adam moments and weights for one projector only. A frozen leaf that its mesh
axes do not divide is stored zero-padded until they do (`sharding.stored_layout`) and sliced
back inside the step, where XLA keeps it split: nothing sits whole on every device.

A step whose loss or gradient norm is not finite leaves the state as it was (its batch is
consumed: `step` advances, `nonfinite` counts it); the learning-rate schedule counts applied
updates (`step - nonfinite`).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from omni_jax import registry, sharding
from omni_jax.config_flags import AT_LEAST_0, AT_LEAST_1, FRACTION, POSITIVE, Range
from omni_jax.errors import CheckpointRefused, InputError
from omni_jax.layers.attention import IMPLEMENTATIONS
from omni_jax.layers.scan import REMAT_POLICIES
from omni_jax.models.omni_emotion import OmniEmotion
from omni_jax.pretrained import override_fields, with_attention
from omni_jax.train.loss import next_token_loss

# phase → the parameter subtrees it trains (paper §4.4; "new token rows" are rows of the LM's
# embedding and head, trained with the LM in phase 3)
PHASES: dict[str, tuple[str, ...]] = {
    "audio_alignment": ("audio_projector",),
    "face_alignment": ("face_encoder/projector",),
    "instruction_tuning": ("multi_modal_projector", "audio_projector", "face_encoder/projector",
                           "face_cross_attention", "frame_embedding", "language_model"),
}

DTYPES = ("float32", "bfloat16", "float16")
# the train section's fields the step reads (config_flags.check_ranges)
FIELDS = {"train.phase": tuple(PHASES), "train.global_batch_size": AT_LEAST_1, "train.microbatches": AT_LEAST_1,
          "train.learning_rate": POSITIVE, "train.warmup_fraction": FRACTION,
          "train.final_learning_rate_fraction": FRACTION, "train.weight_decay": AT_LEAST_0,
          "train.adam_b1": Range(0, 1, open_high=True), "train.adam_b2": Range(0, 1, open_high=True),
          "train.adam_eps": POSITIVE, "train.max_grad_norm": AT_LEAST_0, "train.remat": tuple(REMAT_POLICIES),
          "train.attention_impl": IMPLEMENTATIONS, "train.param_dtype": DTYPES, "train.compute_dtype": DTYPES}


def check_batch(global_batch_size: int, microbatches: int, mesh: Mesh) -> None:
    """The global batch splits over the mesh's batch axes (data × fsdp) in every microbatch."""
    split = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch_size % (split * microbatches):
        raise InputError(f"--config.train.global_batch_size={global_batch_size} does not split into "
                         f"train.microbatches={microbatches} parts over the mesh's data × fsdp = {split} devices: "
                         f"make it a multiple of {split * microbatches}")


def training_model_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The model's fields with the run's dtypes (parameters in param_dtype, compute in
    compute_dtype), attention kernels, the LM's remat policy and its batches' padding (right,
    `data.pipeline.pad_batch`, unless text-only rows are packed: CausalMask.padding)."""
    fields = with_attention(override_fields(cfg.model.to_dict(), dtype=cfg.train.compute_dtype,
                                           param_dtype=cfg.train.param_dtype), cfg.train.attention_impl)
    fields["text"]["remat_policy"] = cfg.train.remat
    fields["text"]["attention_padding"] = "any" if cfg.data.pack_text_only else "right"
    return ml_collections.ConfigDict(fields)


def trainable_mask(params: Any, phase: str) -> Any:
    """The params tree with True at every leaf `phase` trains, False elsewhere."""
    if phase not in PHASES:
        raise InputError(f"unknown phase {phase!r}; choose one of {sorted(PHASES)}")
    prefixes = PHASES[phase]
    flat = traverse_util.flatten_dict(params, sep="/")
    return traverse_util.unflatten_dict(
        {path: any(path == p or path.startswith(p + "/") for p in prefixes) for path in flat}, sep="/")


def split_params(params: Any, mask: Any) -> tuple[dict, dict]:
    """(trainable, frozen): two nested dicts holding the leaves where `mask` is True / False."""
    flat, flat_mask = traverse_util.flatten_dict(params), traverse_util.flatten_dict(mask)
    pick = lambda keep: traverse_util.unflatten_dict({k: v for k, v in flat.items() if flat_mask[k] == keep})
    return pick(True), pick(False)


def resized(tree: Any, shapes: Any) -> Any:
    """Each array of `tree` zero-padded or sliced (at the end of each dimension) to the shape of
    its counterpart in `shapes`."""
    def resize(x, target):
        if x.shape == target.shape:
            return x
        x = x[tuple(slice(0, min(a, b)) for a, b in zip(x.shape, target.shape))]
        return jnp.pad(x, [(0, b - a) for a, b in zip(x.shape, target.shape)])
    return jax.tree.map(resize, tree, shapes)


def merge_params(trainable: Any, frozen: Any) -> dict:
    """The whole parameter tree again (`split_params`' inverse)."""
    return traverse_util.unflatten_dict({**traverse_util.flatten_dict(frozen), **traverse_util.flatten_dict(trainable)})


def learning_rate_schedule(train: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 over `warmup_fraction` of the steps, then cosine decay to
    `final_learning_rate_fraction` × the peak at `total_steps`."""
    peak = train.learning_rate
    warmup = int(round(train.warmup_fraction * total_steps))
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1),
                                              end_value=peak * train.final_learning_rate_fraction)


def make_optimizer(train: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Clipping by global norm, then AdamW (weight decay on matrices only, not on biases,
    norms or single vectors such as the frame embeddings' rows)."""
    adamw = optax.adamw(schedule, b1=train.adam_b1, b2=train.adam_b2, eps=train.adam_eps,
                        weight_decay=train.weight_decay, mask=lambda tree: jax.tree.map(lambda p: p.ndim >= 2, tree))
    return optax.chain(optax.clip_by_global_norm(train.max_grad_norm), adamw) if train.max_grad_norm else adamw


def train_step(model: OmniEmotion, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               state: dict[str, Any], frozen: Any, batch: dict[str, jax.Array], microbatches: int = 1
               ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """state: {"step", "nonfinite", "trainable", "opt_state"}; frozen: the other parameters;
    batch: the model's inputs plus `labels` (-100 except assistant tokens).
    Returns the new state and {"loss", "tokens", "grad_norm", "learning_rate", "finite",
    "nonfinite" (skipped steps so far), "grad_norm/NAME" (each trained top-level subtree's)}.

    microbatches: the batch is split along its first axis into this many parts, run one after
    another (a scan) with their gradients summed: the memory of one part, the update of the
    whole batch. Losses are summed over tokens and divided by the batch's token count, so any
    split gives the same step as the whole batch (up to float rounding).
    """
    trainable = state["trainable"]

    def summed_loss(trainable: Any, part: dict[str, jax.Array]):
        loss, tokens = next_token_loss(model, merge_params(trainable, frozen), part)
        return loss * tokens, tokens

    grad_fn = jax.value_and_grad(summed_loss, has_aux=True)
    if microbatches == 1:
        (total, tokens), grads = grad_fn(trainable, batch)
    else:
        size = jax.tree.leaves(batch)[0].shape[0]
        if size % microbatches:
            raise InputError(f"a batch of {size} does not split into {microbatches} microbatches")
        # Microbatch i takes rows i, i + k, i + 2k, …: each device splits the rows it already
        # holds (no resharding), and the constraint keeps every part spread over all of them.
        parts = jax.tree.map(lambda x: nn.with_logical_constraint(
            jnp.swapaxes(x.reshape(size // microbatches, microbatches, *x.shape[1:]), 0, 1),
            (None, "activation_batch") + (None,) * (x.ndim - 1)), batch)

        def accumulate(carry, part):
            (total, tokens), grads = grad_fn(trainable, part)
            return jax.tree.map(jnp.add, carry, (total, tokens, grads)), None

        zeros = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, trainable))
        (total, tokens, grads), _ = jax.lax.scan(accumulate, zeros, parts)
    count = jnp.maximum(tokens, 1)
    grads = jax.tree.map(lambda g: g / count, grads)
    loss, grad_norm = total / count, optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state["opt_state"], trainable)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # A non-finite step changes nothing but the counters: the where keeps the old values.
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = {"step": state["step"] + 1, "nonfinite": state["nonfinite"] + (~finite).astype(jnp.int32),
                 "trainable": keep(optax.apply_updates(trainable, updates), trainable),
                 "opt_state": keep(opt_state, state["opt_state"])}
    metrics = {"loss": loss, "tokens": tokens, "grad_norm": grad_norm, "finite": finite,
               "nonfinite": new_state["nonfinite"],
               "learning_rate": schedule(state["step"] - state["nonfinite"]),
               **{f"grad_norm/{name}": optax.tree.norm(part) for name, part in grads.items()}}
    return new_state, metrics


def optimizer_shardings(opt_state: Any, params: Any, mesh: Mesh) -> Any:
    """Adam's moments placed like their parameters; counters and the like replicated. (XLA does
    not carry parameter shardings into `init`'s zeros: left alone they come out replicated.)

    A moment is recognised by its key path ending in a parameter's path, with its shape."""
    by_path = {tuple(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    replicated = NamedSharding(mesh, PartitionSpec())

    def place(path, leaf):
        keys = tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path)
        for start in range(len(keys)):
            param = by_path.get(keys[start:])
            if param is not None and param.shape == leaf.shape:
                return param.sharding
        return replicated

    return jax.tree_util.tree_map_with_path(place, opt_state)


@dataclasses.dataclass(frozen=True)
class Trainer:
    """Everything a sharded training run needs, built by `make_trainer`.

    abstract_state / abstract_frozen: ShapeDtypeStructs carrying their shardings (what a
    checkpoint restores into, what `plan` compiles against; frozen leaves as stored, padded
    where their axes do not divide them); frozen_shapes: the frozen leaves as the model has
    them; step(state, frozen, batch) → (state, metrics), jitted with explicit shardings, the
    state donated."""

    model: OmniEmotion
    config: ml_collections.FrozenConfigDict  # the model's
    mesh: Mesh
    phase: str
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    mask: Any
    abstract_state: dict[str, Any]
    abstract_frozen: Any
    frozen_shapes: Any
    batch_sharding: NamedSharding
    step: Callable

    def init_state(self, params: Any) -> tuple[dict[str, Any], Any]:
        """(state at step 0, frozen as stored) from a whole parameter tree placed on the mesh."""
        trainable, frozen = split_params(params, self.mask)
        with self.activate():
            opt_state = jax.jit(self.optimizer.init, out_shardings=_shardings(self.abstract_state["opt_state"]))(
                trainable)
            frozen = jax.jit(lambda f: resized(f, self.abstract_frozen), out_shardings=_shardings(
                self.abstract_frozen))(frozen)
        counter = lambda: jax.device_put(jnp.zeros((), jnp.int32), NamedSharding(self.mesh, PartitionSpec()))
        return {"step": counter(), "nonfinite": counter(), "trainable": trainable, "opt_state": opt_state}, frozen

    def params(self, state: dict[str, Any], frozen: Any) -> dict:
        """The whole parameter tree as the model has it (for evaluation and export)."""
        with self.activate():
            frozen = jax.jit(lambda f: resized(f, self.frozen_shapes), out_shardings=_shardings(self.frozen_shapes))(
                frozen)
        return merge_params(state["trainable"], frozen)

    def activate(self) -> contextlib.AbstractContextManager:
        """The mesh and logical-axis rules every traced function of the run needs."""
        return sharding.activate(self.mesh)


def make_trainer(model_config: ml_collections.ConfigDict, mesh: Mesh, train: ml_collections.ConfigDict,
                 total_steps: int, optimizer: optax.GradientTransformation | None = None) -> Trainer:
    """The phase's train step for `model_config` on `mesh`, as `train` (cfg.train) configures
    it: optimizer (or the one given), schedule over `total_steps`, microbatches; state shapes and
    shardings."""
    family = registry.FAMILIES["omni_emotion"]
    config = registry.to_config(model_config)
    model = registry.build(family, config)
    boxed = registry.abstract_params(family, config, boxed=True)
    params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.unbox(boxed),
                          sharding.param_shardings(boxed, mesh))
    mask = trainable_mask(params, train.phase)
    trainable, frozen_shapes = split_params(params, mask)
    frozen = split_params(sharding.stored_params(boxed, mesh), mask)[1]
    if not jax.tree.leaves(trainable):
        raise CheckpointRefused(f"phase {train.phase!r} trains {PHASES[train.phase]}, which this model does not have")
    schedule = learning_rate_schedule(train, total_steps)
    optimizer = optimizer or make_optimizer(train, schedule)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_state = jax.eval_shape(optimizer.init, trainable)
    opt_state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), opt_state,
                             optimizer_shardings(opt_state, trainable, mesh))
    counter = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
    state = {"step": counter, "nonfinite": counter, "trainable": trainable, "opt_state": opt_state}
    batch_sharding = nn.logical_to_mesh_sharding(PartitionSpec("activation_batch"), mesh,
                                                 sharding.LOGICAL_AXIS_RULES)
    def run_step(state, frozen, batch):
        return train_step(model, optimizer, schedule, state, resized(frozen, frozen_shapes), batch,
                          microbatches=train.microbatches)

    step = jax.jit(run_step, in_shardings=(_shardings(state), _shardings(frozen), batch_sharding),
                   out_shardings=(_shardings(state), replicated), donate_argnums=(0,))
    return Trainer(model, config, mesh, train.phase, optimizer, schedule, mask, state, frozen, frozen_shapes,
                   batch_sharding, step)


def _shardings(abstract: Any) -> Any:
    return jax.tree.map(lambda s: s.sharding, abstract)
