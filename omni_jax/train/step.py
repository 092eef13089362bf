"""One Omni-Emotion training step: assistant-token loss, gradients, AdamW on what the phase trains.

The paper's three phases (§4.4) train different subtrees; everything else is frozen: its
gradients are never formed (only the trainable leaves are differentiated) and it has no
optimizer state (optax.set_to_zero), so phases 1 and 2 keep Adam moments only for a projector.
Gradient accumulation over microbatches gives the paper's batch on fewer devices.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from omni_jax.models.omni_emotion import OmniEmotion, next_token_loss

# phase → (trainable subtree prefixes, the paper's learning rate)
PHASES: dict[str, tuple[tuple[str, ...], float]] = {
    "audio_alignment": (("audio_projector",), 1e-3),
    "face_alignment": (("face_encoder/projector",), 1e-3),
    "instruction_tuning": (("multi_modal_projector", "audio_projector", "face_encoder/projector",
                            "face_cross_attention", "frame_embedding", "language_model"), 1e-5),
}


def trainable_labels(params: Any, phase: str) -> Any:
    """The params tree with "train" or "freeze" at every leaf."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; choose one of {sorted(PHASES)}")
    prefixes = PHASES[phase][0]
    flat = traverse_util.flatten_dict(params, sep="/")
    labels = {path: "train" if any(path == p or path.startswith(p + "/") for p in prefixes) else "freeze"
              for path in flat}
    return traverse_util.unflatten_dict(labels, sep="/")


def make_optimizer(params: Any, phase: str, learning_rate: float | None = None,
                   weight_decay: float = 0.0) -> optax.GradientTransformation:
    """AdamW (the phase's learning rate unless given) on the trainable leaves; nothing on the rest."""
    lr = PHASES[phase][1] if learning_rate is None else learning_rate
    return optax.multi_transform({"train": optax.adamw(lr, weight_decay=weight_decay), "freeze": optax.set_to_zero()},
                                 trainable_labels(params, phase))


def train_step(model: OmniEmotion, optimizer: optax.GradientTransformation, labels: Any, params: Any,
               opt_state: Any, batch: dict[str, jax.Array], microbatches: int = 1
               ) -> tuple[Any, Any, dict[str, jax.Array]]:
    """batch: the model's inputs plus `labels` (-100 except assistant tokens). `labels` is
    `trainable_labels(params, phase)`. Returns (params, opt_state, {"loss", "tokens"}).

    microbatches: the batch is split along its first axis into this many parts, run one after
    another (a scan) with their gradients summed: the memory of one part, the update of the
    whole batch. Losses are summed over tokens and divided by the batch's token count, so any
    split gives the same step as the whole batch (up to float rounding).
    """
    flat_params = traverse_util.flatten_dict(params, sep="/")
    flat_labels = traverse_util.flatten_dict(labels, sep="/")
    trainable = {path: p for path, p in flat_params.items() if flat_labels[path] == "train"}
    frozen = {path: p for path, p in flat_params.items() if flat_labels[path] != "train"}

    def summed_loss(trainable: dict[str, jax.Array], part: dict[str, jax.Array]):
        # Only the trainable leaves are differentiated: no gradient of a frozen weight is formed.
        loss, tokens = next_token_loss(model, traverse_util.unflatten_dict({**frozen, **trainable}, sep="/"), part)
        return loss * tokens, tokens

    grad_fn = jax.value_and_grad(summed_loss, has_aux=True)
    if microbatches == 1:
        (total, tokens), grads = grad_fn(trainable, batch)
    else:
        size = jax.tree.leaves(batch)[0].shape[0]
        if size % microbatches:
            raise ValueError(f"a batch of {size} does not split into {microbatches} microbatches")
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
    grads = {path: g / count for path, g in grads.items()}
    # Frozen leaves get zeros that optax.set_to_zero never reads: XLA drops them.
    full_grads = traverse_util.unflatten_dict({**{p: jnp.zeros_like(v) for p, v in frozen.items()}, **grads}, sep="/")
    updates, opt_state = optimizer.update(full_grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {"loss": total / count, "tokens": tokens}
