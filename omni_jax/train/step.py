"""One Omni-Emotion training step: assistant-token loss, gradients, AdamW on what the phase trains.

The paper's three phases (§4.4) train different subtrees; everything else is frozen: its
gradients are never formed (stop_gradient lets XLA drop those matmuls) and it has no optimizer
state (optax.set_to_zero), so phases 1 and 2 keep Adam moments only for a projector.
"""
from __future__ import annotations

from typing import Any

import jax
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
               opt_state: Any, batch: dict[str, jax.Array]) -> tuple[Any, Any, dict[str, jax.Array]]:
    """batch: the model's inputs plus `labels` (-100 except assistant tokens). `labels` is
    `trainable_labels(params, phase)`. Returns (params, opt_state, {"loss", "tokens"})."""

    def loss_fn(trainable):
        frozen_or_not = jax.tree.map(lambda p, label: p if label == "train" else jax.lax.stop_gradient(p),
                                     trainable, labels)
        return next_token_loss(model, frozen_or_not, batch)

    (loss, tokens), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {"loss": loss, "tokens": tokens}
