"""Whisper audio encoder (transformers' `WhisperEncoder`) and Omni-Emotion's audio projector.

log-mel [batch, n_mels, 3000] → conv1 (k3, s1) + GELU → conv2 (k3, s2) + GELU → + sinusoidal
positions (stored in the checkpoint) → scanned pre-LN layers → final layer norm →
[batch, 1500, width]. `AudioProjector` then average-pools 3:1 (1500 → 500 tokens, ≈60 ms each)
and maps to the LLM width with two Linear layers, GELU between.

Parameter tree (WhisperEncoder):
  conv1/{kernel [3, n_mels, width], bias}, conv2/{kernel [3, width, width], bias}
  embed_positions/embedding                     [1500, width]
  layers/{self_attn/{q,k,v,out}_proj, self_attn_layer_norm, mlp/{fc1,fc2}, final_layer_norm}  (stacked;
         transformers has fc1/fc2 directly on the layer: the conversion table renames them)
  layer_norm/{scale, bias}
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from omni_jax.layers import Attention, Conv, Embed, LayerNorm, Mlp, layer_dtypes, scan_layers
from omni_jax.layers.mlp import ACTIVATIONS
from omni_jax.modality_tokens import audio_input_frames

ACT = ("activation_batch", "activation_length", "activation_embed")


def config_from_hf(hf: dict[str, Any]) -> ml_collections.ConfigDict:
    """`WhisperConfig` → our encoder schema (the decoder half is not used)."""
    return ml_collections.ConfigDict(dict(
        num_mel_bins=hf.get("num_mel_bins", 80),
        hidden_size=hf["d_model"],
        intermediate_size=hf["encoder_ffn_dim"],
        num_layers=hf["encoder_layers"],
        num_heads=hf["encoder_attention_heads"],
        max_source_positions=hf.get("max_source_positions", 1500),
        activation_function=hf.get("activation_function", "gelu"),
        layer_norm_eps=1e-5,  # torch.nn.LayerNorm's default, which Whisper uses
        dtype="float32",
        param_dtype="float32",
        remat_policy="none",
    ))


def config_to_hf(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """An encoder-describing `WhisperConfig` (decoder sizes mirror the encoder's)."""
    return dict(
        model_type="whisper", architectures=["WhisperModel"], num_mel_bins=cfg.num_mel_bins, d_model=cfg.hidden_size,
        encoder_ffn_dim=cfg.intermediate_size, encoder_layers=cfg.num_layers,
        encoder_attention_heads=cfg.num_heads, decoder_ffn_dim=cfg.intermediate_size,
        decoder_layers=cfg.num_layers, decoder_attention_heads=cfg.num_heads,
        max_source_positions=cfg.max_source_positions, activation_function=cfg.activation_function,
    )


def dummy_inputs(cfg: ml_collections.ConfigDict) -> dict[str, jax.Array]:
    return {"input_features": jnp.zeros((1, cfg.num_mel_bins, audio_input_frames(cfg)), jnp.float32)}


class WhisperEncoderLayer(nn.Module):
    config: ml_collections.FrozenConfigDict
    return_hidden: bool = False

    @nn.compact
    def __call__(self, x: jax.Array):
        cfg = self.config
        ln = lambda name: LayerNorm(cfg.layer_norm_eps, name=name, **layer_dtypes(cfg))
        x = nn.with_logical_constraint(x, ACT)
        heads = cfg.num_heads
        x = x + Attention(heads, heads, cfg.hidden_size // heads, qkv_bias=(True, False, True), out_bias=True,
                          out_name="out_proj", implementation=cfg.get("attention_impl", "auto"), name="self_attn",
                          **layer_dtypes(cfg))(ln("self_attn_layer_norm")(x))
        h = Mlp(cfg.intermediate_size, activation=cfg.activation_function, name="mlp",
                **layer_dtypes(cfg))(ln("final_layer_norm")(x))
        x = nn.with_logical_constraint(x + h, ACT)
        return x, (x if self.return_hidden else None)


class WhisperEncoder(nn.Module):
    config: ml_collections.FrozenConfigDict

    @nn.compact
    def __call__(self, input_features: jax.Array, output_hidden_states: bool = False) -> dict[str, Any]:
        """input_features: [batch, n_mels, 3000] log-mel (as WhisperFeatureExtractor gives).

        Returns last_hidden_state [batch, 1500, width] and, if asked, hidden_states: the input
        to every layer and the final (normed) output, as transformers.
        """
        cfg = self.config
        if input_features.shape[-1] != audio_input_frames(cfg):
            raise ValueError(f"Whisper expects {audio_input_frames(cfg)} mel frames (30 s), "
                             f"got {input_features.shape[-1]}: "
                             "pad or cut the audio to the window first")
        gelu = ACTIVATIONS[cfg.activation_function]
        x = jnp.swapaxes(input_features, 1, 2).astype(jnp.dtype(cfg.dtype))  # [batch, frames, n_mels]
        x = gelu(Conv(cfg.hidden_size, (3,), (None, None, "embed"), padding=(1,), name="conv1", **layer_dtypes(cfg))(x))
        x = gelu(Conv(cfg.hidden_size, (3,), (None, None, "embed"), strides=(2,), padding=(1,), name="conv2",
                      **layer_dtypes(cfg))(x))
        positions = Embed(cfg.max_source_positions, cfg.hidden_size, axes=(None, "embed"), name="embed_positions",
                          **layer_dtypes(cfg))(jnp.arange(x.shape[1])[None])
        x = x + positions
        layers = scan_layers(WhisperEncoderLayer, cfg.num_layers, cfg.remat_policy, num_broadcast_args=0)
        encoded, per_layer = layers(cfg, return_hidden=output_hidden_states, name="layers")(x)
        out = {"last_hidden_state": LayerNorm(cfg.layer_norm_eps, name="layer_norm", **layer_dtypes(cfg))(encoded)}
        if output_hidden_states:
            out["hidden_states"] = ((x,) + tuple(per_layer[i] for i in range(cfg.num_layers - 1))
                                    + (out["last_hidden_state"],))
        return out


def average_pool(x: jax.Array, window: int) -> jax.Array:
    """[batch, length, width] → [batch, length // window, width] (torch avg_pool1d, no padding)."""
    batch, length, width = x.shape
    kept = (length // window) * window
    return x[:, :kept].reshape(batch, length // window, window, width).mean(axis=2)


class AudioProjector(nn.Module):
    """Omni-Emotion's audio adapter: 3:1 average pooling, then Linear → GELU → Linear.

    [batch, 1500, encoder width] → [batch, 500, llm width]."""

    llm_width: int
    pool: int = 3
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, encoder_states: jax.Array) -> jax.Array:
        pooled = average_pool(encoder_states, self.pool)
        return Mlp(self.llm_width, self.llm_width, "gelu", names=("linear_1", "linear_2"), in_axis_name="audio_embed",
                   dtype=self.dtype, param_dtype=self.param_dtype, name="mlp")(pooled)
