"""LLaVA-OneVision (transformers' `LlavaOnevisionForConditionalGeneration`): the video path.

SigLIP tower → `mlp2x_gelu` projector → 2×2 bilinear pooling of each frame's patch grid
(27×27 → 14×14 at full size) → frames concatenated → `image_newline` appended → placed at
the `<video>` token positions of the Qwen2 input embeddings.

Parameter tree (transformers' legacy names):
  vision_tower/...            SiglipVisionModel
  multi_modal_projector/{linear_1, linear_2}/{kernel, bias}
  image_newline               [embed]
  language_model/...          Qwen2ForCausalLM
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from omni_jax.layers import Mlp, bilinear_resize, layer_dtypes
from omni_jax.layers.resize import half_size
from omni_jax.models import qwen2, siglip

# The original LLaVA-NeXT release (config model_type "llava_qwen") loads SigLIP so400m by name
# and drops its last layer; transformers' conversion adds <image>/<video> at these ids.
SO400M_MINUS_LAST_LAYER = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
                               num_attention_heads=16, image_size=384, patch_size=14, vision_use_head=False)
LLAVA_QWEN_IMAGE_TOKEN_ID, LLAVA_QWEN_VIDEO_TOKEN_ID = 151646, 151647


def config_from_hf(hf: dict[str, Any]) -> ml_collections.ConfigDict:
    """`LlavaOnevisionConfig` (or an original `llava_qwen` config) → our schema."""
    if hf.get("model_type") == "llava_qwen":
        text, vision = dict(hf), {**SO400M_MINUS_LAST_LAYER, **hf.get("vision_config", {})}
        layer, strategy = -1, "full"
        image_token, video_token = (hf.get("image_token_index", LLAVA_QWEN_IMAGE_TOKEN_ID),
                                    hf.get("video_token_index", LLAVA_QWEN_VIDEO_TOKEN_ID))
        act, bias = "gelu", True
    else:
        text, vision = hf["text_config"], hf["vision_config"]
        layer = hf.get("vision_feature_layer", -1)
        strategy = hf.get("vision_feature_select_strategy", "full")
        image_token = hf.get("image_token_id", hf.get("image_token_index"))
        video_token = hf.get("video_token_id", hf.get("video_token_index"))
        act, bias = hf.get("projector_hidden_act", "gelu"), hf.get("multimodal_projector_bias", True)
    text_cfg = qwen2.config_from_hf({**text, "tie_word_embeddings": hf.get("tie_word_embeddings",
                                                                           text.get("tie_word_embeddings", False))})
    return ml_collections.ConfigDict(dict(
        text=text_cfg,
        vision=siglip.config_from_hf({**vision, "model_type": "siglip_vision_model"}),
        vision_feature_layers=list(layer) if isinstance(layer, (list, tuple)) else [layer],
        vision_feature_select_strategy=strategy,
        projector_hidden_act=act,
        projector_bias=bool(bias),
        image_token_id=image_token,
        video_token_id=video_token,
    ))


def config_to_hf(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    layers = list(cfg.vision_feature_layers)
    return dict(
        model_type="llava_onevision", architectures=["LlavaOnevisionForConditionalGeneration"],
        text_config=qwen2.config_to_hf(cfg.text), vision_config=siglip.config_to_hf(cfg.vision),
        vision_feature_layer=layers[0] if len(layers) == 1 else layers,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        projector_hidden_act=cfg.projector_hidden_act, multimodal_projector_bias=cfg.projector_bias,
        image_token_index=cfg.image_token_id, video_token_index=cfg.video_token_id,
        tie_word_embeddings=cfg.text.tie_word_embeddings,
    )


def dummy_inputs(cfg: ml_collections.ConfigDict) -> dict[str, jax.Array]:
    size = cfg.vision.image_size
    return {"input_ids": jnp.zeros((1, 1), jnp.int32),
            "pixel_values_videos": jnp.zeros((1, 1, size, size, cfg.vision.num_channels), jnp.float32)}


def merge_at_placeholders(embeds: jax.Array, input_ids: jax.Array, token_id: int, features: jax.Array) -> jax.Array:
    """Puts each row's features, in order, at that row's positions where input_ids == token_id.

    embeds: [batch, length, embed]; features: [batch, n, embed]. A row's k-th placeholder takes
    its k-th feature; a row with fewer placeholders leaves the rest unused (a text-only row
    needs none). torch's `masked_scatter` fills the whole batch's placeholders in one row-major
    sequence: the same whenever every row holds n. Static shapes: usable under jit.
    """
    batch, n, width = features.shape
    mask = input_ids == token_id
    index = jnp.clip(jnp.cumsum(mask, axis=1) - 1, 0, n - 1)
    # per row (batch stays a batch dimension of the gather: no collective when it is sharded)
    gathered = jnp.take_along_axis(features, index[..., None], axis=1).astype(embeds.dtype)
    return jnp.where(mask[..., None], gathered, embeds)


class LlavaOnevisionForConditionalGeneration(nn.Module):
    config: ml_collections.FrozenConfigDict

    def setup(self):
        cfg = self.config
        dtypes = layer_dtypes(cfg.text)
        self.vision_tower = siglip.SiglipVisionModel(cfg.vision)
        self.multi_modal_projector = Mlp(cfg.text.hidden_size, cfg.text.hidden_size, cfg.projector_hidden_act,
                                         use_bias=cfg.projector_bias, names=("linear_1", "linear_2"),
                                         in_axis_name="vision_embed", **dtypes)
        self.image_newline = self.param("image_newline",
                                        nn.with_logical_partitioning(nn.initializers.normal(1.0), ("embed",)),
                                        (cfg.text.hidden_size,), jnp.dtype(cfg.text.param_dtype))
        self.language_model = qwen2.Qwen2ForCausalLM(cfg.text)

    def get_video_features(self, pixel_values_videos: jax.Array) -> jax.Array:
        """[batch, frames, height, width, channels] → [batch, frames * tokens_per_frame + 1, embed]."""
        cfg = self.config
        batch, frames = pixel_values_videos.shape[:2]
        pixels = pixel_values_videos.reshape(batch * frames, *pixel_values_videos.shape[2:])
        layers = list(cfg.vision_feature_layers)
        vision = self.vision_tower(pixels, output_hidden_states=layers != [-1])
        if layers == [-1]:
            selected = vision["encoder_output"]
        else:
            selected = jnp.concatenate([vision["hidden_states"][i] for i in layers], axis=-1)
        if cfg.vision_feature_select_strategy == "default":
            selected = selected[:, 1:]
        features = self.multi_modal_projector(selected)
        grid = cfg.vision.image_size // cfg.vision.patch_size
        features = features.reshape(batch * frames, grid, grid, -1)
        features = bilinear_resize(features, half_size(grid, grid))
        features = features.reshape(batch, -1, features.shape[-1])
        newline = jnp.broadcast_to(self.image_newline.astype(features.dtype), (batch, 1, features.shape[-1]))
        return jnp.concatenate([features, newline], axis=1)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 pixel_values_videos: jax.Array | None = None, position_ids: jax.Array | None = None,
                 decode: bool = False, output_hidden_states: bool = False, logits_to_keep: int = 0,
                 prefill: bool = False) -> dict[str, Any]:
        """input_ids: [batch, length] with `video_token_id` placeholders (frames * tokens + 1 per
        video); pixel_values_videos: [batch, frames, height, width, channels]. Returns logits
        [batch, length, vocab], last_hidden_state and (if asked) hidden_states."""
        embeds = self.language_model.embed(input_ids)
        if pixel_values_videos is not None:
            features = self.get_video_features(pixel_values_videos)
            embeds = merge_at_placeholders(embeds, input_ids, self.config.video_token_id,
                                           features.reshape(input_ids.shape[0], -1, features.shape[-1]))
        return self.language_model(attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=embeds,
                                   decode=decode, output_hidden_states=output_hidden_states,
                                   logits_to_keep=logits_to_keep, prefill=prefill)
