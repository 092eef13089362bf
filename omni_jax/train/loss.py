"""The training objective: next-token cross-entropy on the assistant's tokens, in chunks.

Labels are IGNORE (-100) everywhere but the assistant's tokens (`omni_jax.data.text`); the
[batch, length, vocab] logits of a 4–8 k-token multimodal prompt at a 152 k vocabulary would
dominate activation memory, so the loss is computed `loss_chunk_size` positions at a time.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from omni_jax.modality_tokens import IGNORE
from omni_jax.models.omni_emotion import OmniEmotion


def next_token_targets(labels: jax.Array) -> jax.Array:
    """labels: [batch, length] (IGNORE except assistant tokens) → the label each position
    predicts: labels shifted left by one, IGNORE at the end (as transformers' causal LM loss)."""
    return jnp.concatenate([labels[:, 1:], jnp.full_like(labels[:, :1], IGNORE)], axis=1)


def chunked_cross_entropy(hidden: jax.Array, targets: jax.Array, logits_fn: Callable[[jax.Array], jax.Array],
                          chunk_size: int) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy over positions whose target is not IGNORE, and their count.

    hidden: [batch, length, embed]; targets: [batch, length]; logits_fn: [batch, chunk, embed]
    → [batch, chunk, vocab]. The sequence is scanned in chunks of `chunk_size` positions (the
    last padded with IGNORE), so [batch, length, vocab] logits never exist: each chunk's logits
    are reduced to logsumexp − target logit at once, and the chunk is rematerialised in the
    backward pass (a scan would otherwise keep every chunk's logits as residuals).
    """
    batch, length, width = hidden.shape
    chunks = -(-length // chunk_size)
    pad = chunks * chunk_size - length
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(batch, chunks, chunk_size, width)
    targets = jnp.pad(targets, ((0, 0), (0, pad)), constant_values=IGNORE).reshape(batch, chunks, chunk_size)

    @jax.checkpoint
    def chunk_loss(h: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = logits_fn(h).astype(jnp.float32)
        counted = t != IGNORE
        target_logit = jnp.take_along_axis(logits, jnp.where(counted, t, 0)[..., None], axis=-1)[..., 0]
        nll = jax.nn.logsumexp(logits, axis=-1) - target_logit
        return jnp.sum(jnp.where(counted, nll, 0.0)), jnp.sum(counted)

    def step(carry, chunk):
        total, count = chunk_loss(*chunk)
        return (carry[0] + total, carry[1] + count), None

    (total, count), _ = jax.lax.scan(step, (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)),
                                     (jnp.swapaxes(hidden, 0, 1), jnp.swapaxes(targets, 0, 1)))
    return total / jnp.maximum(count, 1), count


def next_token_loss(model: OmniEmotion, params: Any, batch: dict[str, jax.Array],
                    chunk_size: int | None = None) -> tuple[jax.Array, jax.Array]:
    """batch: the model's inputs plus `labels` [batch, length] (IGNORE except assistant tokens).

    Returns (mean next-token cross-entropy over the assistant tokens, their count), computed
    `chunk_size` (default: the config's `loss_chunk_size`) positions at a time."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = model.apply({"params": params}, **inputs, method=OmniEmotion.last_hidden_state)
    logits_fn = lambda h: model.apply({"params": params}, h, method=OmniEmotion.lm_logits)
    return chunked_cross_entropy(hidden, next_token_targets(batch["labels"]), logits_fn,
                                 chunk_size or model.config.loss_chunk_size)
