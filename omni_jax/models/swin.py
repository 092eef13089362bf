"""Swin Transformer v1 backbone (torchvision `swin_b`, transformers `SwinModel`); images are
channels-last and feature maps stay `[batch, height, width, channels]` throughout.

Parameter tree:
  embeddings/patch_embeddings/{kernel [patch, patch, channels, embed], bias}, embeddings/norm
  encoder/layers_{s}/blocks/{layernorm_before, attention/{q,k,v,o}_proj, relative_position_bias_table,
                             layernorm_after, mlp/{fc1, fc2}}          (stacked on "layers")
  encoder/layers_{s}/downsample/{norm, reduction}                       (every stage but the last)
  layernorm                                                             (after the last stage)

Windows follow torchvision (the FaceXFormer release was trained with it): a stage pads its grid
to a multiple of the window, and shifts by half a window only along an axis the window does not
already cover, so a stage whose grid is not larger than the window neither shifts nor (when
equal) pads. transformers' `SwinModel` agrees wherever it runs: square grids at least the window
(it fails on smaller ones, and on a non-square grid with one side at most the window it turns
off the shift along both axes).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from omni_jax.errors import InputError
from omni_jax.layers import Attention, Conv, DenseGeneral, LayerNorm, Mlp, apply_layers, layer_dtypes

ACT = ("activation_batch", None, None, "activation_embed")
MASKED = -100.0  # what torchvision and transformers add across shifted-window regions (not -inf)
SWIN_B = dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=7, patch_size=4,
              image_size=224)


def config_from_hf(hf: dict[str, Any]) -> ml_collections.ConfigDict:
    """`SwinConfig` → our schema (defaults are SwinConfig's: Swin-T)."""
    if hf.get("use_absolute_embeddings", False):
        raise InputError("Swin with absolute position embeddings is not supported (Swin-B uses relative ones only)")
    return ml_collections.ConfigDict(dict(
        embed_dim=hf.get("embed_dim", 96),
        depths=list(hf.get("depths", [2, 2, 6, 2])),
        num_heads=list(hf.get("num_heads", [3, 6, 12, 24])),
        window_size=hf.get("window_size", 7),
        patch_size=hf.get("patch_size", 4),
        image_size=hf.get("image_size", 224),
        num_channels=hf.get("num_channels", 3),
        mlp_ratio=hf.get("mlp_ratio", 4.0),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-5),
        hidden_act=hf.get("hidden_act", "gelu"),
        qkv_bias=bool(hf.get("qkv_bias", True)),
        dtype="float32",
        param_dtype="float32",
        remat_policy="none",
        scan_layers=True,  # False unrolls the blocks (load_pretrained(scan_layers=False)): faster on the CPU
    ))


def config_to_hf(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    return dict(
        model_type="swin", architectures=["SwinModel"], embed_dim=cfg.embed_dim, depths=list(cfg.depths),
        num_heads=list(cfg.num_heads), window_size=cfg.window_size, patch_size=cfg.patch_size,
        image_size=cfg.image_size, num_channels=cfg.num_channels, mlp_ratio=cfg.mlp_ratio,
        layer_norm_eps=cfg.layer_norm_eps, hidden_act=cfg.hidden_act, qkv_bias=cfg.qkv_bias,
    )


def dummy_inputs(cfg: ml_collections.ConfigDict) -> dict[str, jax.Array]:
    return {"pixel_values": jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32)}


def window_geometry(height: int, width: int, window: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The padded grid (next multiples of the window) and the shift along each axis: half a
    window, or 0 where one window already spans the padded axis (torchvision's rule)."""
    padded = tuple(math.ceil(n / window) * window for n in (height, width))
    return padded, tuple(0 if window >= n else window // 2 for n in padded)


def partition_windows(x: jax.Array, window: int) -> jax.Array:
    """[batch, height, width, channels] (multiples of the window) → [batch * windows, window², channels],
    windows in row-major order within each image. Works on numpy and JAX arrays."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b * (h // window) * (w // window), window * window, c)


def merge_windows(windows: jax.Array, batch: int, height: int, width: int) -> jax.Array:
    """Inverse of `partition_windows`: [batch * windows, window², channels] → [batch, height, width, channels]."""
    window = math.isqrt(windows.shape[1])
    c = windows.shape[-1]
    x = windows.reshape(batch, height // window, width // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, height, width, c)


def relative_position_index(window: int) -> np.ndarray:
    """[window², window²]: row of the [(2·window − 1)², heads] bias table holding the offset
    between two tokens of a window. Computed, never stored: the checkpoints' buffers are dropped."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    offsets = coords[:, :, None] - coords[:, None, :] + (window - 1)
    return offsets[0] * (2 * window - 1) + offsets[1]


def shifted_window_mask(padded: tuple[int, int], window: int, shift: tuple[int, int]) -> np.ndarray:
    """[windows, window², window²]: 0 between tokens of the same region of the rolled map,
    MASKED between tokens the cyclic roll brought together from opposite edges."""
    def regions(size: int, s: int) -> np.ndarray:
        index = np.arange(size)
        return (index >= size - window).astype(np.int32) + (index >= size - s).astype(np.int32)

    labels = regions(padded[0], shift[0])[:, None] * 3 + regions(padded[1], shift[1])[None, :]
    labels = partition_windows(labels[None, :, :, None], window)[..., 0]
    return np.where(labels[:, None, :] != labels[:, :, None], MASKED, 0.0).astype(np.float32)


class SwinBlock(nn.Module):
    """Pre-LN (shifted-)window attention with relative position bias, then the MLP.

    Even blocks of a stage attend within windows, odd blocks within windows shifted by half a
    window. The block index rides in the scan carry, so one scanned body serves both: the shift
    becomes a traced roll amount and a 0/1 weight on the region mask (exact: a roll by 0 and a
    zero bias change nothing)."""

    config: ml_collections.FrozenConfigDict
    num_heads: int

    @nn.compact
    def __call__(self, carry: tuple[jax.Array, jax.Array]):
        """carry: (x [batch, height, width, channels], block index) → (carry, None)."""
        x, index = carry
        cfg = self.config
        ln = lambda name: LayerNorm(cfg.layer_norm_eps, name=name, **layer_dtypes(cfg))
        x = nn.with_logical_constraint(x, ACT)
        x = x + self._window_attention(ln("layernorm_before")(x), index % 2)
        x = x + Mlp(int(cfg.mlp_ratio * x.shape[-1]), activation=cfg.hidden_act, name="mlp",
                    **layer_dtypes(cfg))(ln("layernorm_after")(x))
        return (nn.with_logical_constraint(x, ACT), index + 1), None

    def _window_attention(self, x: jax.Array, odd: jax.Array) -> jax.Array:
        """x: [batch, height, width, channels]; odd: 1 in shifted blocks, else 0 (traced)."""
        cfg, window = self.config, self.config.window_size
        batch, height, width, channels = x.shape
        (pad_h, pad_w), shift = window_geometry(height, width, window)
        table = self.param("relative_position_bias_table",
                           nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "heads")),
                           ((2 * window - 1) ** 2, self.num_heads), jnp.dtype(cfg.param_dtype))
        bias = table[relative_position_index(window)].transpose(2, 0, 1)[None]  # [1, heads, window², window²]
        x = jnp.pad(x, ((0, 0), (0, pad_h - height), (0, pad_w - width), (0, 0)))
        if any(shift):
            amount = odd * jnp.asarray(shift)
            x = jnp.roll(x, (-amount[0], -amount[1]), axis=(1, 2))
            mask = jnp.asarray(shifted_window_mask((pad_h, pad_w), window, shift)) * odd
            bias = jnp.tile(bias + mask[:, None], (batch, 1, 1, 1))  # windows are batch-major
        out = Attention(self.num_heads, self.num_heads, channels // self.num_heads, qkv_bias=cfg.qkv_bias,
                        out_bias=True, name="attention", **layer_dtypes(cfg))(partition_windows(x, window), bias=bias)
        out = merge_windows(out, batch, pad_h, pad_w)
        if any(shift):
            out = jnp.roll(out, (amount[0], amount[1]), axis=(1, 2))
        return out[:, :height, :width]


class SwinPatchMerging(nn.Module):
    """Each 2×2 neighbourhood → one token: [batch, h, w, c] → [batch, ⌈h/2⌉, ⌈w/2⌉, 2c].

    Odd sides are zero-padded; the four neighbours are concatenated in the (row, col) order
    (0, 0), (1, 0), (0, 1), (1, 1) — the order of both torchvision and transformers — then
    LayerNorm(4c) and a bias-free Linear(4c → 2c)."""

    config: ml_collections.FrozenConfigDict

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        b, h, w, c = x.shape
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        h2, w2 = (h + 1) // 2, (w + 1) // 2
        x = x.reshape(b, h2, 2, w2, 2, c).transpose(0, 1, 3, 4, 2, 5).reshape(b, h2, w2, 4 * c)
        x = LayerNorm(cfg.layer_norm_eps, name="norm", **layer_dtypes(cfg))(x)
        return DenseGeneral(2 * c, ("mlp", "embed"), name="reduction", **layer_dtypes(cfg))(x)


class SwinStage(nn.Module):
    config: ml_collections.FrozenConfigDict
    stage: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """x: [batch, h, w, c] → (the stage output, same shape; the next stage's input
        [batch, ⌈h/2⌉, ⌈w/2⌉, 2c], or None after the last stage)."""
        cfg = self.config
        (x, _), _ = apply_layers(SwinBlock, cfg.depths[self.stage], (x, jnp.zeros((), jnp.int32)),
                                 remat=cfg.remat_policy, scan=cfg.get("scan_layers", True), name="blocks",
                                 config=cfg, num_heads=cfg.num_heads[self.stage])
        if self.stage == len(cfg.depths) - 1:
            return x, None
        return x, SwinPatchMerging(cfg, name="downsample")(x)


class SwinEmbeddings(nn.Module):
    """Non-overlapping patch projection (a stride-`patch` convolution), then LayerNorm."""

    config: ml_collections.FrozenConfigDict

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """[batch, height, width, channels] → [batch, height / patch, width / patch, embed]."""
        cfg, p = self.config, self.config.patch_size
        x = Conv(cfg.embed_dim, (p, p), (None, None, None, "embed"), strides=(p, p), name="patch_embeddings",
                 **layer_dtypes(cfg))(pixel_values)
        return LayerNorm(cfg.layer_norm_eps, name="norm", **layer_dtypes(cfg))(x)


class SwinEncoder(nn.Module):
    config: ml_collections.FrozenConfigDict

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        """x: [batch, h, w, embed] → every stage's output (before its patch merging)."""
        outputs = []
        for stage in range(len(self.config.depths)):
            out, x = SwinStage(self.config, stage, name=f"layers_{stage}")(x)
            outputs.append(out)
        return tuple(outputs)


class SwinModel(nn.Module):
    config: ml_collections.FrozenConfigDict

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> dict[str, Any]:
        """pixel_values: [batch, height, width, channels] (sides multiples of the patch; a
        remainder is dropped, as torchvision's strided convolution does).

        Returns stage_outputs: one [batch, h_s, w_s, c_s] map per stage, before patch merging
        and without a norm (FaceXFormer's multi-scale features; transformers' reshaped hidden
        states before downsampling); last_hidden_state [batch, h·w, c] after the final
        LayerNorm, and pooler_output [batch, c], its mean — as transformers.
        """
        cfg = self.config
        x = SwinEmbeddings(cfg, name="embeddings")(pixel_values.astype(jnp.dtype(cfg.dtype)))
        stage_outputs = SwinEncoder(cfg, name="encoder")(x)
        last = LayerNorm(cfg.layer_norm_eps, name="layernorm", **layer_dtypes(cfg))(stage_outputs[-1])
        last = last.reshape(last.shape[0], -1, last.shape[-1])
        return {"stage_outputs": stage_outputs, "last_hidden_state": last, "pooler_output": last.mean(axis=1)}
