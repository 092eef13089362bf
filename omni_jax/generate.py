"""Greedy decoding with the KV cache, compiled whole: one prefill, then a `lax.while_loop`
that feeds one token per step (no Python per token).

Works for any model whose `__call__(input_ids, attention_mask, ..., decode=True)` returns
`logits` (Qwen2ForCausalLM, LlavaOnevisionForConditionalGeneration, OmniEmotion): multimodal inputs go
to the prefill only. Only the last position's logits are computed (`logits_to_keep=1`): a long
(video) prompt would otherwise build [batch, prompt, vocab] float32 logits, 0.6 GB per 1000
tokens at Qwen2's vocabulary.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def init_cache(model: nn.Module, batch: int, max_length: int) -> Any:
    """Zeroed KV cache for `max_length` slots, shaped without running the model."""
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.key(0), input_ids=jnp.zeros((batch, max_length), jnp.int32),
        attention_mask=jnp.ones((batch, max_length), jnp.int32), decode=True)["cache"])
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_token_id", "pad_token_id"))
def greedy_generate(model: nn.Module, params: Any, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                    max_new_tokens: int = 16, eos_token_id: int | None = None, pad_token_id: int = 0,
                    **prefill_inputs: Any) -> jax.Array:
    """input_ids: [batch, prompt] (left-padded; attention_mask marks real tokens).

    Returns the new tokens [batch, max_new_tokens]; after a row's EOS it holds pad_token_id.
    """
    batch, prompt_len = input_ids.shape
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    full_mask = jnp.concatenate([attention_mask.astype(jnp.int32), jnp.ones((batch, max_new_tokens), jnp.int32)], 1)
    cache = init_cache(model, batch, prompt_len + max_new_tokens)

    def step(cache, tokens, **inputs):
        out, variables = model.apply({"params": params, "cache": cache}, input_ids=tokens, attention_mask=full_mask,
                                     decode=True, logits_to_keep=1, mutable=["cache"], **inputs)
        return jnp.argmax(out["logits"][:, -1], axis=-1).astype(jnp.int32), variables["cache"]

    token, cache = step(cache, input_ids, **prefill_inputs)
    generated = jnp.full((batch, max_new_tokens), pad_token_id, jnp.int32).at[:, 0].set(token)
    done = token == eos_token_id if eos_token_id is not None else jnp.zeros((batch,), bool)

    def cond(state):
        i, _, _, _, done = state
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(state):
        i, token, cache, generated, done = state
        token, cache = step(cache, token[:, None])
        token = jnp.where(done, pad_token_id, token)
        generated = generated.at[:, i].set(token)
        if eos_token_id is not None:
            done = done | (token == eos_token_id)
        return i + 1, token, cache, generated, done

    state = jax.lax.while_loop(cond, body, (jnp.array(1), token, cache, generated, done))
    return state[3]
