"""Qwen2 decoder-only LM (transformers' `Qwen2ForCausalLM`), scanned and cache-aware.

Parameter tree (mirrors transformers, layers stacked on a leading axis):
  model/embed_tokens/embedding                      [vocab, embed]
  model/layers/{input_layernorm,post_attention_layernorm}/scale     [layers, embed]
  model/layers/self_attn/{q,k,v}_proj/{kernel,bias} [layers, embed, heads, head_dim], [layers, heads, head_dim]
  model/layers/self_attn/o_proj/kernel              [layers, heads, head_dim, embed]
  model/layers/mlp/{gate,up}_proj/kernel            [layers, embed, mlp]; down_proj [layers, mlp, embed]
  model/norm/scale                                  [embed]
  lm_head/kernel                                    [embed, vocab]   (absent when tied)
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from omni_jax.errors import InputError
from omni_jax.layers import (
    Attention,
    CausalMask,
    DenseGeneral,
    Embed,
    GatedMlp,
    RMSNorm,
    apply_layers,
    layer_dtypes,
    rotary_cos_sin,
)

ACT = ("activation_batch", "activation_length", "activation_embed")


def config_from_hf(hf: dict[str, Any]) -> ml_collections.ConfigDict:
    """transformers `Qwen2Config` dict → our config schema (see configs/qwen2.py)."""
    if hf.get("use_sliding_window"):
        raise InputError("Qwen2 sliding-window attention is not supported (use_sliding_window=true)")
    rope_theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    rope_type = (hf.get("rope_parameters") or hf.get("rope_scaling") or {}).get("rope_type", "default")
    if rope_type != "default":
        raise InputError(f"Qwen2 rope_type {rope_type!r} is not supported")
    heads = hf["num_attention_heads"]
    return ml_collections.ConfigDict(dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope_theta),
        hidden_act=hf.get("hidden_act", "silu"),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        dtype="float32",
        param_dtype="float32",
        remat_policy="none",
        scan_layers=True,  # False unrolls the layers: faster memory-bound decoding on CPU
    ))


def config_to_hf(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """Our config → a `Qwen2Config` dict that transformers loads."""
    return dict(
        model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta, hidden_act=cfg.hidden_act, tie_word_embeddings=cfg.tie_word_embeddings,
    )


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """[batch, length] 0/1 or segment ids → position ids counting real tokens only, from 0 in
    each segment (left padding → 0-based; a packed row's examples each start at 0)."""
    valid = attention_mask != 0
    count = jnp.cumsum(valid, axis=-1, dtype=jnp.int32) - 1
    previous = jnp.pad(attention_mask, ((0, 0), (1, 0)))[:, :-1]
    first = jax.lax.cummax(jnp.where(valid & (attention_mask != previous), count, 0), axis=1)
    return jnp.where(valid, count - first, jnp.maximum(count, 0))


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)); x + mlp(norm(x))."""

    config: ml_collections.FrozenConfigDict
    decode: bool = False
    return_hidden: bool = False

    @nn.compact
    def __call__(self, x, mask, rotary, cache_slot):
        cfg = self.config
        dtypes = layer_dtypes(cfg)
        norm = lambda name: RMSNorm(cfg.rms_norm_eps, scale_axes=("norm",), name=name, **dtypes)
        x = nn.with_logical_constraint(x, ACT)
        h = Attention(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, qkv_bias=True, decode=self.decode,
                      implementation=cfg.get("attention_impl", "auto"), name="self_attn",
                      **dtypes)(norm("input_layernorm")(x), mask, rotary, cache_slot)
        x = x + h
        h = GatedMlp(cfg.intermediate_size, cfg.hidden_act, name="mlp", **dtypes)(norm("post_attention_layernorm")(x))
        x = nn.with_logical_constraint(x + h, ACT)
        return x, (x if self.return_hidden else None)


class Qwen2Model(nn.Module):
    """Embeddings → scanned decoder layers → final norm."""

    config: ml_collections.FrozenConfigDict

    def setup(self):
        cfg = self.config
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, **layer_dtypes(cfg))
        self.norm = RMSNorm(cfg.rms_norm_eps, **layer_dtypes(cfg))

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                 decode: bool = False, output_hidden_states: bool = False, prefill: bool = False) -> dict[str, Any]:
        """input_ids: [batch, length] (or inputs_embeds [batch, length, embed]).

        attention_mask: [batch, length] 1 for real tokens, 0 for padding, or segment ids (1, 2, …)
        for rows packed with several examples, which then neither see each other nor share
        positions; when decoding, [batch, cache_length] covering every cache slot (prompt,
        generated and still-to-come tokens). The config's `attention_padding` (CausalMask.padding,
        default "any") says how a forward's rows are padded, except a prefill's (left-padded).
        prefill (with decode): the first call on a fresh cache, which it fills from slot 0; its
        queries then attend to the keys it writes, causally from the start, which the fused
        attention kernels take.
        Returns last_hidden_state [batch, length, embed] and, if asked, hidden_states: the
        embeddings and each layer's output (the last one after the final norm), as transformers.
        """
        cfg = self.config
        if prefill and not decode:
            raise ValueError("prefill fills the KV cache: it needs decode=True")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds.astype(jnp.dtype(cfg.dtype))
        batch, length = x.shape[:2]
        cache_slot = jnp.zeros((), jnp.int32)
        if decode:
            # One write slot for the whole model; the cache itself is per layer.
            cache_initialized = self.has_variable("cache", "index")
            index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
            cache_slot = index.value
            if cache_initialized:
                index.value = index.value + length
        q_slots = cache_slot + jnp.arange(length)
        if attention_mask is None:
            attention_mask = jnp.ones((batch, length), jnp.int32)
            padding = "right"  # none at all
        else:
            # How the rows are padded (a promise: the values are traced) decides what cuDNN is
            # given (CausalMask.padding): generate's prompts are left-padded.
            padding = "left" if prefill else cfg.get("attention_padding", "any")
        if position_ids is None:
            position_ids = jnp.take(positions_from_mask(attention_mask), q_slots, axis=1)
        if decode and not prefill:
            mask = CausalMask(attention_mask.astype(jnp.int32), q_slots)
        else:
            mask = CausalMask(attention_mask[:, :length].astype(jnp.int32), jnp.arange(length), from_start=True,
                              padding=padding)
        rotary = rotary_cos_sin(position_ids, cfg.head_dim, cfg.rope_theta)
        x, per_layer = apply_layers(DecoderLayer, cfg.num_layers, x, mask, rotary, cache_slot,
                                    remat=cfg.remat_policy, scan=cfg.get("scan_layers", True), config=cfg,
                                    decode=decode, return_hidden=output_hidden_states)
        out = self.norm(x)
        result = {"last_hidden_state": out}
        if output_hidden_states:
            hidden = [inputs_embeds if inputs_embeds is not None else self.embed_tokens(input_ids)]
            hidden += [per_layer[i] for i in range(cfg.num_layers - 1)] + [out]
            result["hidden_states"] = tuple(hidden)
        return result


class Qwen2ForCausalLM(nn.Module):
    """Qwen2Model + LM head (tied to the embeddings or its own `[embed, vocab]` kernel)."""

    config: ml_collections.FrozenConfigDict

    def setup(self):
        cfg = self.config
        self.model = Qwen2Model(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = DenseGeneral(cfg.vocab_size, ("embed", "vocab"), **layer_dtypes(cfg))

    def embed(self, input_ids: jax.Array) -> jax.Array:
        return self.model.embed_tokens(input_ids)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """hidden: [batch, length, embed] → [batch, length, vocab] (float32)."""
        if self.config.tie_word_embeddings:
            logits = self.model.embed_tokens.attend(hidden)
        else:
            logits = self.lm_head(hidden)
        return nn.with_logical_constraint(logits.astype(jnp.float32),
                                          ("activation_batch", "activation_length", "activation_vocab"))

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                 decode: bool = False, output_hidden_states: bool = False, logits_to_keep: int = 0,
                 prefill: bool = False) -> dict[str, Any]:
        """As Qwen2Model, plus logits [batch, length, vocab] (float32) — for the last
        `logits_to_keep` positions only when it is > 0, as transformers."""
        out = self.model(input_ids, attention_mask, position_ids, inputs_embeds, decode=decode,
                         output_hidden_states=output_hidden_states, prefill=prefill)
        hidden = out["last_hidden_state"]
        out["logits"] = self.logits(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        return out


def dummy_inputs(cfg: ml_collections.ConfigDict) -> dict[str, jax.Array]:
    """Smallest inputs that trace every parameter (for `eval_shape` of `init`)."""
    return {"input_ids": jnp.zeros((1, 1), jnp.int32)}
