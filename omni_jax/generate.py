"""Decoding with the KV cache, compiled whole: one prefill, then a `lax.while_loop` that feeds
one token per step (no Python per token). Greedy, or sampling with temperature, top-k and top-p
(transformers' order: temperature, then top-k, then top-p), seeded.

Works for any model whose `__call__(input_ids, attention_mask, ..., decode=True, prefill=…)`
returns `logits` (Qwen2ForCausalLM, LlavaOnevisionForConditionalGeneration, OmniEmotion):
multimodal inputs go to the prefill only, which fills the fresh cache from slot 0 (so its
attention is causal from the start: the fused kernels' case). Only the last position's logits
are computed (`logits_to_keep=1`): a long
(video) prompt would otherwise build [batch, prompt, vocab] float32 logits, 0.6 GB per 1000
tokens at Qwen2's vocabulary.

Sharded decoding: call it under `jax.set_mesh(mesh)` with parameters and inputs placed as in
training (batch over the data axes); the random draws do not depend on the sharding (JAX's
partitionable threefry), so a sampled run on 8 devices equals one on a single device.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def init_cache(model: nn.Module, batch: int, max_length: int) -> Any:
    """Zeroed KV cache for `max_length` slots, shaped without running the model."""
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.key(0), input_ids=jnp.zeros((batch, max_length), jnp.int32),
        attention_mask=jnp.ones((batch, max_length), jnp.int32), decode=True)["cache"])
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def filter_logits(logits: jax.Array, temperature: float, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """logits: [batch, vocab] float32 → scaled by 1/temperature, with the tokens outside the
    top-k and outside the smallest set whose probability reaches top_p set to -inf (as
    transformers' warpers: ties at the cut-off are kept, the most likely token always is)."""
    logits = logits / temperature
    if top_k:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        before = jnp.cumsum(jax.nn.softmax(ordered, axis=-1), axis=-1) - jax.nn.softmax(ordered, axis=-1)
        # keep a token while the tokens more likely than it hold less than top_p
        cutoff = jnp.min(jnp.where(before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_token_ids", "pad_token_id",
                                             "temperature", "top_k", "top_p"))
def generate(model: nn.Module, params: Any, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
             max_new_tokens: int = 16, eos_token_ids: Sequence[int] = (), pad_token_id: int = 0,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, rng: jax.Array | None = None,
             **prefill_inputs: Any) -> jax.Array:
    """input_ids: [batch, prompt] (left-padded; attention_mask marks real tokens).

    temperature 0: greedy (argmax); otherwise tokens are drawn from the filtered distribution
    with `rng` (a key; step i draws with fold_in(rng, i)). A row stops after any of
    `eos_token_ids`; the loop ends when every row has stopped or after max_new_tokens.
    Returns the new tokens [batch, max_new_tokens]; after a row's stop token, pad_token_id.
    """
    batch, prompt_len = input_ids.shape
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    if temperature > 0 and rng is None:
        raise ValueError("sampling (temperature > 0) needs rng, a jax.random key")
    full_mask = jnp.concatenate([attention_mask.astype(jnp.int32), jnp.ones((batch, max_new_tokens), jnp.int32)], 1)
    cache = init_cache(model, batch, prompt_len + max_new_tokens)
    stop_ids = jnp.asarray(tuple(eos_token_ids) or (-1,), jnp.int32)

    def step(i, cache, tokens, prefill=False, **inputs):
        out, variables = model.apply({"params": params, "cache": cache}, input_ids=tokens, attention_mask=full_mask,
                                     decode=True, prefill=prefill, logits_to_keep=1, mutable=["cache"], **inputs)
        logits = out["logits"][:, -1].astype(jnp.float32)
        if temperature > 0:
            token = jax.random.categorical(jax.random.fold_in(rng, i), filter_logits(logits, temperature, top_k, top_p))
        else:
            token = jnp.argmax(logits, axis=-1)
        return token.astype(jnp.int32), variables["cache"]

    token, cache = step(0, cache, input_ids, prefill=True, **prefill_inputs)
    generated = jnp.full((batch, max_new_tokens), pad_token_id, jnp.int32).at[:, 0].set(token)
    done = jnp.isin(token, stop_ids)

    def cond(state):
        i, _, _, _, done = state
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(state):
        i, token, cache, generated, done = state
        token, cache = step(i, cache, token[:, None])
        token = jnp.where(done, pad_token_id, token)
        generated = generated.at[:, i].set(token)
        return i + 1, token, cache, generated, done | jnp.isin(token, stop_ids)

    state = jax.lax.while_loop(cond, body, (jnp.array(1), token, cache, generated, done))
    return state[3]
