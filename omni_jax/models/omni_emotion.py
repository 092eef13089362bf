"""Omni-Emotion: LLaVA-OneVision's video path + FaceXFormer face tokens + Whisper audio tokens,
fused in the Qwen2 input sequence (Yang et al. 2025, §4).

Prompt layout: `omni_jax.modality_tokens` (the multimodal block and its placeholder counts, shared with
the data pipeline). The loss lives with training (`omni_jax.train.loss`).

Video block layouts (F frames; V visual tokens per frame = the 2×2-pooled SigLIP grid; A face
tokens per frame = the face grid; one learned `image_newline`), F·(V + A) + 1 slots in every mode:
  video_concat (default):    frame 1..F visual, newline, frame 1..F face          (paper Table 3)
  frame_concat:              frame 1 visual, frame 1 face, ..., frame F face, newline
  frame_cross_attention:     as frame_concat, each frame's face tokens replaced by
                             face + CrossAttention(query = face, key/value = that frame's visual)
The newline stays where LLaVA-OV puts it, after all of a video's visual tokens (in the per-frame
layouts: after the last frame), so LLaVA-OV's layout is the video_concat prefix. The frame
embedding (one learned vector per frame index, zero-initialised so a LLaVA-OV checkpoint starts
unchanged) is added to a frame's visual and face tokens (before the cross-attention); the
newline and the audio tokens get none. Audio block: windows × 500 tokens (full size), in order.

Missing modality (paper: "replaced by a zero tensor of the same shape"): the data pipeline gives
zeros of the same static shape and a `has_video`/`has_face`/`has_audio` [batch] flag; the model
zeroes that modality's *embeddings*, so its slots carry exact zero vectors and no token count
changes. Zeros are taken at the embedding level, not the input: a zero image or log-mel is not
"nothing" to an encoder (biases, normalisation and positions make its output a constant,
input-independent feature the LM would read as a real blank face, frame or voice). An absent
video also zeroes the newline, and its zeroed visual tokens are what face tokens attend to.

Parameter tree (LLaVA-OV's names at the top level, so a converted LLaVA-OV tree drops in):
  vision_tower/..., multi_modal_projector/..., image_newline, language_model/...   (LLaVA-OV)
  face_encoder/...           FaceXFormerEncoder (backbone, linear_c_*, linear_fuse, projector)
  audio_encoder/...          WhisperEncoder
  audio_projector/mlp/{linear_1, linear_2}
  frame_embedding            [frames, embed]
  face_cross_attention/...   frame_cross_attention only: {query_norm, key_value_norm, attention}
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from omni_jax.errors import InputError
from omni_jax.layers import Attention, LayerNorm, layer_dtypes
from omni_jax.modality_tokens import audio_input_frames
from omni_jax.models import facexformer, whisper
from omni_jax.models.llava_onevision import LlavaOnevisionForConditionalGeneration, merge_at_placeholders

FUSIONS = ("video_concat", "frame_concat", "frame_cross_attention")


def config_from_hf(hf_config: dict[str, Any]) -> ml_collections.ConfigDict:
    """config.json of an exported Omni-Emotion checkpoint → its config (the same fields)."""
    skip = ("model_type", "dtype", "torch_dtype", "architectures", "transformers_version")
    return ml_collections.ConfigDict({k: v for k, v in hf_config.items() if k not in skip})


def config_to_hf(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    return {"model_type": "omni_emotion", "architectures": ["OmniEmotion"], **cfg.to_dict()}


def dummy_inputs(cfg: ml_collections.ConfigDict) -> dict[str, jax.Array]:
    """Smallest inputs that trace every parameter: one clip, every modality."""
    frames, size = cfg.num_frames, cfg.vision.image_size
    face = cfg.face.swin.image_size
    return {"input_ids": jnp.zeros((1, 1), jnp.int32),
            "pixel_values_videos": jnp.zeros((1, frames, size, size, cfg.vision.num_channels), jnp.float32),
            "face_pixels": jnp.zeros((1, frames, face, face, cfg.face.swin.num_channels), jnp.float32),
            "input_features": jnp.zeros((1, cfg.audio_windows, cfg.audio.num_mel_bins,
                                         audio_input_frames(cfg.audio)), jnp.float32)}


def _present(tokens: jax.Array, flag: jax.Array | None) -> jax.Array:
    """Zeroes the rows of an absent modality; tokens: [batch, ...]; flag: [batch] bool or None."""
    if flag is None:
        return tokens
    return jnp.where(flag.reshape((-1,) + (1,) * (tokens.ndim - 1)), tokens, jnp.zeros_like(tokens))


class FaceCrossAttention(nn.Module):
    """Per frame: face + Attention(query = LN(face), key/value = LN(visual)).

    face: [frames, A, embed]; visual: [frames, V, embed] → [frames, A, embed]. The output
    projection starts at zero, so a new block is the identity on the face tokens: phase 2 (which
    freezes it) aligns the face projector through the identity, not through random weights, and
    phase 3 trains the block from there (its output projection gets gradients at once, the
    rest once that projection moves: zero-initialised residual branches, as in ReZero)."""

    num_heads: int
    epsilon: float = 1e-6
    implementation: str = "auto"  # attention_impl
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, face: jax.Array, visual: jax.Array) -> jax.Array:
        dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        width = face.shape[-1]
        attention = Attention(self.num_heads, self.num_heads, width // self.num_heads, qkv_bias=True, out_bias=True,
                              out_init=nn.initializers.zeros_init(), implementation=self.implementation,
                              name="attention", **dtypes)
        query = LayerNorm(self.epsilon, name="query_norm", **dtypes)(face)
        return face + attention(query, kv=LayerNorm(self.epsilon, name="key_value_norm", **dtypes)(visual))


class OmniEmotion(LlavaOnevisionForConditionalGeneration):
    """LLaVA-OneVision (inherited: tower, projector, newline, LM, `get_video_features`) with the
    face and audio paths, frame embeddings and the fusions the module docstring lays out."""

    def setup(self):
        super().setup()
        cfg = self.config
        if cfg.fusion not in FUSIONS:
            raise InputError(f"unknown fusion {cfg.fusion!r}; choose one of {FUSIONS}")
        if cfg.face.llm_width != cfg.text.hidden_size:
            raise InputError(f"face.llm_width {cfg.face.llm_width} != text.hidden_size {cfg.text.hidden_size}")
        dtypes = layer_dtypes(cfg.text)
        self.face_encoder = facexformer.FaceXFormerEncoder(cfg.face)
        self.audio_encoder = whisper.WhisperEncoder(cfg.audio)
        self.audio_projector = whisper.AudioProjector(cfg.text.hidden_size, cfg.audio_pool, **dtypes)
        self.frame_embedding = self.param("frame_embedding",
                                          nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, "embed")),
                                          (cfg.num_frames, cfg.text.hidden_size), dtypes["param_dtype"])
        if cfg.fusion == "frame_cross_attention":
            self.face_cross_attention = FaceCrossAttention(
                cfg.cross_attention_heads, implementation=cfg.text.get("attention_impl", "auto"), **dtypes
            )

    def video_block(self, pixel_values_videos: jax.Array, face_pixels: jax.Array, has_video: jax.Array | None = None,
                    has_face: jax.Array | None = None) -> jax.Array:
        """pixel_values_videos: [batch, F, H, W, C] (SigLIP-preprocessed); face_pixels:
        [batch, F, 224, 224, C] (ImageNet-normalised crops) → [batch, F·(V + A) + 1, embed]."""
        cfg = self.config
        batch, frames = pixel_values_videos.shape[:2]
        if frames != cfg.num_frames or face_pixels.shape[:2] != (batch, frames):
            raise ValueError(f"expected {cfg.num_frames} frames and face crops per clip, got "
                             f"{pixel_values_videos.shape[:2]} and {face_pixels.shape[:2]}")
        features = self.get_video_features(pixel_values_videos)  # [batch, F·V + 1, embed]
        width = features.shape[-1]
        visual = features[:, :-1].reshape(batch, frames, -1, width)
        newline = _present(features[:, -1:], has_video)
        faces = self.face_encoder(face_pixels.reshape(batch * frames, *face_pixels.shape[2:]))["last_hidden_state"]
        frame_embedding = self.frame_embedding.astype(features.dtype)[None, :, None]
        visual = _present(visual + frame_embedding, has_video)
        faces = faces.reshape(batch, frames, -1, width).astype(features.dtype) + frame_embedding
        if cfg.fusion == "frame_cross_attention":
            faces = self.face_cross_attention(faces.reshape(batch * frames, -1, width),
                                              visual.reshape(batch * frames, -1, width)).reshape(faces.shape)
        faces = _present(faces, has_face)
        if cfg.fusion == "video_concat":
            parts = [visual.reshape(batch, -1, width), newline, faces.reshape(batch, -1, width)]
        else:
            parts = [jnp.concatenate([visual, faces], axis=2).reshape(batch, -1, width), newline]
        return jnp.concatenate(parts, axis=1)

    def audio_block(self, input_features: jax.Array, has_audio: jax.Array | None = None) -> jax.Array:
        """input_features: [batch, windows, n_mels, 3000] log-mel → [batch, windows × 500, embed]."""
        batch, windows = input_features.shape[:2]
        states = self.audio_encoder(input_features.reshape(batch * windows, *input_features.shape[2:]))
        tokens = self.audio_projector(states["last_hidden_state"])
        return _present(tokens.reshape(batch, -1, tokens.shape[-1]), has_audio)

    def embed_inputs(self, input_ids: jax.Array, pixel_values_videos: jax.Array | None = None,
                     face_pixels: jax.Array | None = None, input_features: jax.Array | None = None,
                     has_video: jax.Array | None = None, has_face: jax.Array | None = None,
                     has_audio: jax.Array | None = None) -> jax.Array:
        """Token embeddings [batch, length, embed] with each row's video block at its
        `video_token_id` positions and its audio block at its `audio_token_id` positions (a clip's
        row holds exactly `placeholder_counts` of each; a text-only row may hold none). Modalities
        left None are not merged (decoding steps)."""
        cfg = self.config
        embeds = self.language_model.embed(input_ids)
        if (pixel_values_videos is None) != (face_pixels is None):
            raise ValueError("the video block needs pixel_values_videos and face_pixels together")
        if pixel_values_videos is not None:
            block = self.video_block(pixel_values_videos, face_pixels, has_video, has_face)
            embeds = merge_at_placeholders(embeds, input_ids, cfg.video_token_id,
                                           block.reshape(block.shape[0], -1, block.shape[-1]))
        if input_features is not None:
            block = self.audio_block(input_features, has_audio)
            embeds = merge_at_placeholders(embeds, input_ids, cfg.audio_token_id,
                                           block.reshape(block.shape[0], -1, block.shape[-1]))
        return embeds

    def last_hidden_state(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                          position_ids: jax.Array | None = None, **modalities: jax.Array | None) -> jax.Array:
        """The LM's final hidden states [batch, length, embed], without logits (for the loss)."""
        embeds = self.embed_inputs(input_ids, **modalities)
        return self.language_model.model(attention_mask=attention_mask, position_ids=position_ids,
                                         inputs_embeds=embeds)["last_hidden_state"]

    def lm_logits(self, hidden: jax.Array) -> jax.Array:
        return self.language_model.logits(hidden)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 pixel_values_videos: jax.Array | None = None, face_pixels: jax.Array | None = None,
                 input_features: jax.Array | None = None, has_video: jax.Array | None = None,
                 has_face: jax.Array | None = None, has_audio: jax.Array | None = None,
                 position_ids: jax.Array | None = None, decode: bool = False, output_hidden_states: bool = False,
                 logits_to_keep: int = 0, prefill: bool = False) -> dict[str, Any]:
        """input_ids: [batch, length] laid out by `multimodal_prompt_ids`; input_features:
        [batch, windows, n_mels, 3000]; has_*: [batch] bool (None: present). Returns logits
        [batch, length, vocab] (float32), last_hidden_state and (if asked) hidden_states."""
        embeds = self.embed_inputs(input_ids, pixel_values_videos, face_pixels, input_features,
                                   has_video, has_face, has_audio)
        return self.language_model(attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=embeds,
                                   decode=decode, output_hidden_states=output_hidden_states,
                                   logits_to_keep=logits_to_keep, prefill=prefill)


def fill_token_rows(table: jax.Array, token_ids: Sequence[int], trained_rows: int, vocab_axis: int,
                    rows: int | None = None) -> jax.Array:
    """`table` with the rows (along `vocab_axis`) of `token_ids` set to the mean of its first
    `trained_rows` rows, grown to `rows` (default: enough for every id) if it is shorter."""
    table = jnp.moveaxis(jnp.asarray(table), vocab_axis, 0)
    rows = rows or max(table.shape[0], int(max(token_ids)) + 1)
    table = jnp.pad(table, ((0, rows - table.shape[0]),) + ((0, 0),) * (table.ndim - 1))
    mean = jnp.mean(table[:trained_rows].astype(jnp.float32), axis=0).astype(table.dtype)
    return jnp.moveaxis(table.at[jnp.asarray(token_ids)].set(mean), 0, vocab_axis)


def init_token_rows(params: dict[str, Any], token_ids: Sequence[int], trained_rows: int) -> dict[str, Any]:
    """Sets the embedding rows (and untied LM-head columns) of `token_ids` to the mean of the
    first `trained_rows` rows (the tokens the checkpoint learned); both tables grow to
    max(token_ids) + 1 rows if they are shorter (then set `text.vocab_size` to match).
    Pure: returns a new tree, `params` is unchanged."""
    lm = params["language_model"]
    new_lm = {**lm, "model": {**lm["model"], "embed_tokens": {
        "embedding": fill_token_rows(lm["model"]["embed_tokens"]["embedding"], token_ids, trained_rows, 0)}}}
    if "lm_head" in lm:
        new_lm["lm_head"] = {**lm["lm_head"], "kernel": fill_token_rows(lm["lm_head"]["kernel"], token_ids,
                                                                        trained_rows, 1)}
    return {**params, "language_model": new_lm}
