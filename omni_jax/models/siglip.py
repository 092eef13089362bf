"""SigLIP vision tower (transformers' `SiglipVisionModel`); images are channels-last.

Parameter tree:
  embeddings/patch_embedding/{kernel [patch, patch, channels, embed], bias}
  embeddings/position_embedding/embedding  [num_patches, embed]
  encoder/layers/{self_attn, layer_norm1, mlp, layer_norm2}   (stacked on "layers")
  post_layernorm/{scale, bias}
  head/{probe, attention/{in_proj, out_proj}, layernorm, mlp}  (only with use_head)
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from omni_jax.layers import Attention, DenseGeneral, Embed, LayerNorm, Mlp, layer_dtypes, scan_layers
from omni_jax.layers.attention import dot_product_attention

ACT = ("activation_batch", "activation_length", "activation_embed")


def config_from_hf(hf: dict[str, Any]) -> ml_collections.ConfigDict:
    """`SiglipVisionConfig` (or a full `SiglipConfig`, whose vision half is taken) → our schema."""
    if hf.get("model_type") == "siglip":
        hf = hf["vision_config"]
    return ml_collections.ConfigDict(dict(
        hidden_size=hf.get("hidden_size", 768),
        intermediate_size=hf.get("intermediate_size", 3072),
        num_layers=hf.get("num_hidden_layers", 12),
        num_heads=hf.get("num_attention_heads", 12),
        num_channels=hf.get("num_channels", 3),
        image_size=hf.get("image_size", 224),
        patch_size=hf.get("patch_size", 16),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-6),
        hidden_act=hf.get("hidden_act", "gelu_pytorch_tanh"),
        use_head=bool(hf.get("vision_use_head", True)),
        dtype="float32",
        param_dtype="float32",
        remat_policy="none",
    ))


def config_to_hf(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    return dict(
        model_type="siglip_vision_model", architectures=["SiglipVisionModel"], hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_channels=cfg.num_channels, image_size=cfg.image_size,
        patch_size=cfg.patch_size, layer_norm_eps=cfg.layer_norm_eps, hidden_act=cfg.hidden_act,
        vision_use_head=cfg.use_head,
    )


def dummy_inputs(cfg: ml_collections.ConfigDict) -> dict[str, jax.Array]:
    return {"pixel_values": jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32)}


class SiglipEmbeddings(nn.Module):
    """Non-overlapping patch projection (a stride-`patch` convolution) + learned positions."""

    config: ml_collections.FrozenConfigDict

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values: [batch, height, width, channels] → [batch, patches, embed]."""
        cfg, p = self.config, self.config.patch_size
        b, h, w, c = pixel_values.shape
        gh, gw = h // p, w // p
        # A VALID convolution drops the edge that does not fill a patch (384 = 27 × 14 + 6).
        patches = pixel_values[:, :gh * p, :gw * p].reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = DenseGeneral(cfg.hidden_size, (None, None, None, "embed"), axis=(3, 4, 5), use_bias=True,
                         name="patch_embedding", **layer_dtypes(cfg))(patches)
        x = x.reshape(b, -1, cfg.hidden_size)
        positions = Embed(x.shape[1], cfg.hidden_size, axes=(None, "embed"), name="position_embedding",
                          **layer_dtypes(cfg))(jnp.arange(x.shape[1])[None])
        return x + positions


class SiglipEncoderLayer(nn.Module):
    config: ml_collections.FrozenConfigDict
    return_hidden: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None):
        cfg, dtypes = self.config, layer_dtypes(self.config)
        ln = lambda name: LayerNorm(cfg.layer_norm_eps, name=name, **dtypes)
        x = nn.with_logical_constraint(x, ACT)
        heads = cfg.num_heads
        x = x + Attention(heads, heads, cfg.hidden_size // heads, qkv_bias=True, out_bias=True, out_name="out_proj",
                          implementation=cfg.get("attention_impl", "auto"), name="self_attn",
                          **dtypes)(ln("layer_norm1")(x), mask)
        x = x + Mlp(cfg.intermediate_size, activation=cfg.hidden_act, name="mlp", **dtypes)(ln("layer_norm2")(x))
        x = nn.with_logical_constraint(x, ACT)
        return x, (x if self.return_hidden else None)


class SiglipEncoder(nn.Module):
    config: ml_collections.FrozenConfigDict

    @nn.compact
    def __call__(self, x: jax.Array, output_hidden_states: bool = False):
        """x: [batch, patches, embed] → (output, per-layer outputs [layers, batch, patches, embed] or None)."""
        cfg = self.config
        layers = scan_layers(SiglipEncoderLayer, cfg.num_layers, cfg.remat_policy, num_broadcast_args=1)
        return layers(cfg, return_hidden=output_hidden_states, name="layers")(x, None)


class SiglipAttentionPoolingHead(nn.Module):
    """Multihead attention pooling: a learned probe attends over the patches (one vector/image)."""

    config: ml_collections.FrozenConfigDict

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        probe = self.param("probe", nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, None, "embed")),
                           (1, 1, cfg.hidden_size), jnp.dtype(cfg.param_dtype))
        query_in = jnp.broadcast_to(probe.astype(x.dtype), (x.shape[0], 1, cfg.hidden_size))
        h = _PoolingAttention(cfg, name="attention")(query_in, x)
        residual = h
        h = LayerNorm(cfg.layer_norm_eps, name="layernorm", **layer_dtypes(cfg))(h)
        h = residual + Mlp(cfg.intermediate_size, activation=cfg.hidden_act, name="mlp", **layer_dtypes(cfg))(h)
        return h[:, 0]


class _PoolingAttention(nn.Module):
    """torch.nn.MultiheadAttention layout: one packed in_proj for q, k, v and an out_proj."""

    config: ml_collections.FrozenConfigDict

    @nn.compact
    def __call__(self, query_in: jax.Array, kv_in: jax.Array) -> jax.Array:
        """query_in: [batch, 1, embed]; kv_in: [batch, patches, embed] → [batch, 1, embed]."""
        cfg = self.config
        heads, head_dim = cfg.num_heads, cfg.hidden_size // cfg.num_heads
        in_proj = DenseGeneral((3, heads, head_dim), ("embed", None, "heads", "head_dim"), use_bias=True,
                               name="in_proj", **layer_dtypes(cfg))
        q = in_proj(query_in)[:, :, 0]
        kv = in_proj(kv_in)
        out = dot_product_attention(q, kv[:, :, 1], kv[:, :, 2], None)
        return DenseGeneral(cfg.hidden_size, ("heads", "head_dim", "embed"), axis=(-2, -1), use_bias=True,
                            name="out_proj", **layer_dtypes(cfg))(out)


class SiglipVisionModel(nn.Module):
    config: ml_collections.FrozenConfigDict

    @nn.compact
    def __call__(self, pixel_values: jax.Array, output_hidden_states: bool = False) -> dict[str, Any]:
        """pixel_values: [batch, height, width, channels].

        Returns last_hidden_state [batch, patches, embed] (after post_layernorm), pooler_output
        [batch, embed] with the head, and hidden_states (embeddings + each layer's output,
        before post_layernorm) when asked — as transformers. `encoder_output` is the last
        layer's output (= hidden_states[-1]) without collecting the others.
        """
        cfg = self.config
        x = SiglipEmbeddings(cfg, name="embeddings")(pixel_values.astype(jnp.dtype(cfg.dtype)))
        encoded, per_layer = SiglipEncoder(cfg, name="encoder")(x, output_hidden_states)
        out = {"last_hidden_state": LayerNorm(cfg.layer_norm_eps, name="post_layernorm", **layer_dtypes(cfg))(encoded),
               "encoder_output": encoded}
        if cfg.use_head:
            out["pooler_output"] = SiglipAttentionPoolingHead(cfg, name="head")(out["last_hidden_state"])
        if output_hidden_states:
            out["hidden_states"] = (x,) + tuple(per_layer[i] for i in range(cfg.num_layers))
        return out
