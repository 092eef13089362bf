"""The face encoder: FaceXFormer's (Narayan et al. 2024) Swin-B + multi-scale fusion, then
Omni-Emotion's face tokens and face projector.

Swin stage outputs (128@56², 256@28², 512@14², 1024@7² for a 224-px crop, taken before patch
merging and without a norm, as FaceXFormer's hooks on `backbone.0.{1,3,5,7}` do) → one Linear
to 256 per scale → bilinear upsampling to the first stage's grid (torch `interpolate`,
align_corners=False) → concatenated deepest-first → 1×1 convolution 1024 → 256 without bias:
the fused map FaceXFormer's task decoder reads. Omni-Emotion then pools it to `face_grid`
(default 14×14 = 196 tokens per face; the paper does not say how, adaptive average pooling is
used; computed from each scale's own grid, which the linearity of the steps allows) and
projects the flattened tokens with Linear → GELU → Linear to the LLM width.

Parameter tree:
  backbone/...                      SwinModel (its final `layernorm`, the release's backbone.1,
                                    serves `last_hidden_state` only)
  linear_c_{0..3}/{kernel, bias}    [stage width, 256]
  linear_fuse/kernel                [1, 1, 4 · 256, 256]
  projector/{linear_1, linear_2}    [256, llm] and [llm, llm], with biases
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from omni_jax.layers import Conv, DenseGeneral, Mlp, bilinear_resize, layer_dtypes, resize_then_pool
from omni_jax.models import swin


def release_config(face_grid: int | tuple[int, int] = 14, llm_width: int = 3584,
                   swin_config: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
    """The released FaceXFormer encoder (Swin-B at 224 px, 256-wide fusion) with Omni-Emotion's
    token grid and projector width; `swin_config` replaces the backbone (small test models)."""
    grid = [face_grid, face_grid] if isinstance(face_grid, int) else list(face_grid)
    return ml_collections.ConfigDict(dict(
        swin=swin_config if swin_config is not None else swin.config_from_hf(swin.SWIN_B),
        decoder_hidden_size=256,
        face_grid=grid,
        llm_width=llm_width,
        projector_hidden_act="gelu",
        dtype="float32",
        param_dtype="float32",
    ))


def config_from_hf(source: dict[str, Any]) -> ml_collections.ConfigDict:
    """The release ships no config.json: its architecture is fixed. `source` (what
    `config_to_hf` wrote) may name the backbone, the grid and the LLM width."""
    backbone = swin.config_from_hf(source["swin"]) if "swin" in source else None
    return release_config(source.get("face_grid", 14), source.get("llm_width", 3584), backbone)


def config_to_hf(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    return dict(model_type="facexformer", swin=swin.config_to_hf(cfg.swin), face_grid=list(cfg.face_grid),
                llm_width=cfg.llm_width)


def dummy_inputs(cfg: ml_collections.ConfigDict) -> dict[str, jax.Array]:
    return swin.dummy_inputs(cfg.swin)


def face_tokens(cfg: ml_collections.ConfigDict) -> int:
    """Tokens per face crop (196 at the default 14×14 grid)."""
    return cfg.face_grid[0] * cfg.face_grid[1]


class FaceXFormerEncoder(nn.Module):
    config: ml_collections.FrozenConfigDict

    def setup(self):
        cfg = self.config
        dtypes = layer_dtypes(cfg)
        width = cfg.decoder_hidden_size
        self.backbone = swin.SwinModel(cfg.swin)
        self.linear_c = [DenseGeneral(width, ("embed", "mlp"), use_bias=True, **dtypes)
                         for _ in cfg.swin.depths]
        self.linear_fuse = Conv(width, (1, 1), (None, None, "mlp", "embed"), use_bias=False, **dtypes)
        self.projector = Mlp(cfg.llm_width, cfg.llm_width, cfg.projector_hidden_act, names=("linear_1", "linear_2"),
                             in_axis_name="vision_embed", **dtypes)

    def __call__(self, pixel_values: jax.Array) -> dict[str, jax.Array]:
        """pixel_values: face crops [batch, 224, 224, 3], ImageNet-normalised (`data.faces`).

        Returns last_hidden_state [batch, tokens, llm width] (the projected face tokens),
        pooled_features [batch, tokens, 256] and fused_features [batch, h_0, w_0, 256].
        """
        return self.head(self.backbone(pixel_values)["stage_outputs"])

    def head(self, stage_outputs: tuple[jax.Array, ...]) -> dict[str, jax.Array]:
        """What follows the backbone (stage outputs, each [batch, h_s, w_s, c_s]): fusion, pooling
        to the face grid, projector (`__call__`'s outputs)."""
        size, grid = stage_outputs[0].shape[1:3], tuple(self.config.face_grid)
        scales = [linear(x) for linear, x in zip(self.linear_c, stage_outputs)][::-1]  # deepest first
        fused = self.linear_fuse(jnp.concatenate([bilinear_resize(x, size) for x in scales], axis=-1))
        # Upsampling, the 1x1 fusion and pooling are linear, so the tokens pool each scale straight
        # from its own grid and fuse at the face grid: the 56² map (13 GFLOP of fusion per 8 crops)
        # is computed only where `fused_features` is used.
        pooled = self.linear_fuse(jnp.concatenate([resize_then_pool(x, size, grid) for x in scales], axis=-1))
        pooled = pooled.reshape(pooled.shape[0], -1, pooled.shape[-1])
        return {"last_hidden_state": self.projector(pooled), "pooled_features": pooled, "fused_features": fused}
