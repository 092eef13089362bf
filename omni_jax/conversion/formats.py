"""Declarative rename/reshape tables, one per source checkpoint format.

A rule maps one PyTorch key to one Flax leaf ("a/b/c"). `{layer}` in a key is the index of a
scanned layer: those tensors are stacked on the leaf's leading axis. Formats for composite
models are built by prefixing the tables of their parts.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import ml_collections

from omni_jax import registry
from omni_jax.conversion.transforms import CONV, FLATTEN, IDENTITY, LINEAR, LINEAR_FROM_HEADS, Packed, Transform
from omni_jax.errors import CheckpointRefused
from omni_jax.models.retinaface import MOBILENET_STAGES, RESNET50_LAYERS


@dataclasses.dataclass(frozen=True)
class Rule:
    source: str
    target: str
    transform: Transform = IDENTITY

    @property
    def stacked(self) -> bool:
        return "{layer}" in self.source

    @property
    def pattern(self) -> re.Pattern:
        return re.compile(re.escape(self.source).replace(r"\{layer\}", r"(?P<layer>\d+)") + "$")


@dataclasses.dataclass(frozen=True)
class Format:
    """A source naming scheme: its rules and the source keys it drops on purpose."""

    name: str
    rules: tuple[Rule, ...]
    ignore: tuple[str, ...] = ()  # regexes of keys that carry nothing the model needs


def linear(src: str, dst: str, bias: bool = True, transform: Transform = LINEAR,
           bias_transform: Transform = IDENTITY) -> tuple[Rule, ...]:
    rules = (Rule(f"{src}.weight", f"{dst}/kernel", transform),)
    return rules + ((Rule(f"{src}.bias", f"{dst}/bias", bias_transform),) if bias else ())


def norm(src: str, dst: str, bias: bool = True) -> tuple[Rule, ...]:
    rules = (Rule(f"{src}.weight", f"{dst}/scale"),)
    return rules + ((Rule(f"{src}.bias", f"{dst}/bias"),) if bias else ())


def prefixed(rules: tuple[Rule, ...], src: str, dst: str) -> tuple[Rule, ...]:
    return tuple(Rule(src + r.source, f"{dst}/{r.target}" if dst else r.target, r.transform) for r in rules)


def _attention(src: str, dst: str, out: str, out_bias: bool) -> tuple[Rule, ...]:
    return (
        *(
            r
            for p in ("q_proj", "k_proj", "v_proj")
            for r in linear(f"{src}.{p}", f"{dst}/{p}", bias_transform=FLATTEN)
        ),
        *linear(f"{src}.{out}", f"{dst}/{out}", bias=out_bias, transform=LINEAR_FROM_HEADS),
    )


# --- Qwen2 (transformers Qwen2Model, without the "model." prefix) ---------------------------
QWEN2_BODY = (
    Rule("embed_tokens.weight", "embed_tokens/embedding"),
    *_attention("layers.{layer}.self_attn", "layers/self_attn", "o_proj", out_bias=False),
    *(r for p in ("gate_proj", "up_proj", "down_proj") for r in linear(f"layers.{{layer}}.mlp.{p}", f"layers/mlp/{p}",
                                                                       bias=False)),
    *norm("layers.{layer}.input_layernorm", "layers/input_layernorm", bias=False),
    *norm("layers.{layer}.post_attention_layernorm", "layers/post_attention_layernorm", bias=False),
    *norm("norm", "norm", bias=False),
)
LM_HEAD = linear("lm_head", "lm_head", bias=False)
QWEN2_CAUSAL_LM = prefixed(QWEN2_BODY, "model.", "model") + LM_HEAD
QWEN2 = Format("qwen2", QWEN2_CAUSAL_LM, ignore=(r".*rotary_emb\.inv_freq$",))

# --- SigLIP vision tower (transformers SiglipVisionTransformer, without "vision_model.") -------
SIGLIP_VISION_BODY = (
    *linear("embeddings.patch_embedding", "embeddings/patch_embedding", transform=CONV),
    Rule("embeddings.position_embedding.weight", "embeddings/position_embedding/embedding"),
    *_attention("encoder.layers.{layer}.self_attn", "encoder/layers/self_attn", "out_proj", out_bias=True),
    *norm("encoder.layers.{layer}.layer_norm1", "encoder/layers/layer_norm1"),
    *linear("encoder.layers.{layer}.mlp.fc1", "encoder/layers/mlp/fc1"),
    *linear("encoder.layers.{layer}.mlp.fc2", "encoder/layers/mlp/fc2"),
    *norm("encoder.layers.{layer}.layer_norm2", "encoder/layers/layer_norm2"),
    *norm("post_layernorm", "post_layernorm"),
    # The attention-pooling head (vision_use_head): probe, nn.MultiheadAttention, LN, MLP.
    Rule("head.probe", "head/probe"),
    Rule("head.attention.in_proj_weight", "head/attention/in_proj/kernel", LINEAR),
    Rule("head.attention.in_proj_bias", "head/attention/in_proj/bias", FLATTEN),
    *linear("head.attention.out_proj", "head/attention/out_proj", transform=LINEAR_FROM_HEADS),
    *norm("head.layernorm", "head/layernorm"),
    *linear("head.mlp.fc1", "head/mlp/fc1"),
    *linear("head.mlp.fc2", "head/mlp/fc2"),
)
SIGLIP_VISION_FORMATS = (
    # transformers 5 writes SiglipVisionModel without the "vision_model." prefix.
    Format("siglip_vision_model", SIGLIP_VISION_BODY),
    # Older transformers, and the dual-tower SiglipModel (whose text half is dropped).
    Format("siglip", prefixed(SIGLIP_VISION_BODY, "vision_model.", ""),
           ignore=(r"^text_model\..*", r"^logit_scale$", r"^logit_bias$")),
)

# --- Whisper encoder (transformers WhisperEncoder, without its prefix) ----------------------
WHISPER_ENCODER_BODY = (
    *linear("conv1", "conv1", transform=CONV),
    *linear("conv2", "conv2", transform=CONV),
    Rule("embed_positions.weight", "embed_positions/embedding"),
    *(r for p in ("q_proj", "v_proj") for r in linear(f"layers.{{layer}}.self_attn.{p}", f"layers/self_attn/{p}",
                                                       bias_transform=FLATTEN)),
    *linear("layers.{layer}.self_attn.k_proj", "layers/self_attn/k_proj", bias=False),
    *linear("layers.{layer}.self_attn.out_proj", "layers/self_attn/out_proj", transform=LINEAR_FROM_HEADS),
    *norm("layers.{layer}.self_attn_layer_norm", "layers/self_attn_layer_norm"),
    *linear("layers.{layer}.fc1", "layers/mlp/fc1"),
    *linear("layers.{layer}.fc2", "layers/mlp/fc2"),
    *norm("layers.{layer}.final_layer_norm", "layers/final_layer_norm"),
    *norm("layer_norm", "layer_norm"),
)
_WHISPER_NOT_ENCODER = (r"^(model\.)?decoder\..*", r"^proj_out\.weight$", r"^projector\..*", r"^classifier\..*")
WHISPER_FORMATS = (
    # WhisperModel and WhisperForAudioClassification ("encoder." + their own heads, dropped).
    Format("whisper", prefixed(WHISPER_ENCODER_BODY, "encoder.", ""), ignore=_WHISPER_NOT_ENCODER),
    # WhisperForConditionalGeneration.
    Format("whisper_generation", prefixed(WHISPER_ENCODER_BODY, "model.encoder.", ""), ignore=_WHISPER_NOT_ENCODER),
    # An encoder saved on its own.
    Format("whisper_encoder", WHISPER_ENCODER_BODY),
)

# --- LLaVA-OneVision -------------------------------------------------------------------------
_PROJECTOR = (*linear("linear_1", "linear_1"), *linear("linear_2", "linear_2"))


def _llava(name: str, vision: str, projector: tuple[Rule, ...], newline: str, lm_body: str,
           lm_head: str) -> Format:
    return Format(name, (
        *prefixed(SIGLIP_VISION_BODY, vision, "vision_tower"),
        *projector,
        Rule(newline, "image_newline"),
        *prefixed(QWEN2_BODY, lm_body, "language_model/model"),
        *prefixed(LM_HEAD, lm_head, "language_model"),
    ), ignore=QWEN2.ignore)


LLAVA_ONEVISION_FORMATS = (
    # What transformers 5 `save_pretrained` writes.
    _llava("llava_onevision", "vision_tower.", prefixed(_PROJECTOR, "multi_modal_projector.", "multi_modal_projector"),
           "image_newline", "language_model.model.", "language_model."),
    # The llava-hf hub release (transformers 4 legacy names).
    _llava("llava_onevision_hub", "vision_tower.vision_model.",
           prefixed(_PROJECTOR, "multi_modal_projector.", "multi_modal_projector"),
           "image_newline", "language_model.model.", "language_model."),
    # transformers 4.52+ names (LlavaOnevisionModel under "model.").
    _llava("llava_onevision_v4", "model.vision_tower.vision_model.",
           prefixed(_PROJECTOR, "model.multi_modal_projector.", "multi_modal_projector"),
           "model.image_newline", "model.language_model.", ""),
    # The original LLaVA-NeXT (llava_qwen) release.
    _llava("llava_next", "model.vision_tower.vision_tower.vision_model.",
           (*linear("model.mm_projector.0", "multi_modal_projector/linear_1"),
            *linear("model.mm_projector.2", "multi_modal_projector/linear_2")),
           "model.image_newline", "model.", ""),
)


# --- Swin v1 (transformers SwinModel and torchvision swin_b names, one Flax tree) --------------
SWIN_STAGES = 4  # every Swin v1 (tiny to large) has four stages
_HF_SWIN_BLOCK = dict(norm1="layernorm_before", table="attention.self.relative_position_bias_table",
                      out="attention.output.dense", norm2="layernorm_after", fc1="intermediate.dense",
                      fc2="output.dense")
_TORCHVISION_SWIN_BLOCK = dict(norm1="norm1", table="attn.relative_position_bias_table", out="attn.proj",
                               norm2="norm2", fc1="mlp.0", fc2="mlp.3")
_QKV = ("q_proj", "k_proj", "v_proj")


def _hf_swin_qkv(src: str, dst: str) -> tuple[Rule, ...]:
    return tuple(r for name, proj in zip(("query", "key", "value"), _QKV)
                 for r in linear(f"{src}attention.self.{name}", f"{dst}{proj}", bias_transform=FLATTEN))


def _torchvision_swin_qkv(src: str, dst: str) -> tuple[Rule, ...]:
    """torchvision packs q, k, v in one Linear: each of our projections reads its third."""
    return tuple(r for i, proj in enumerate(_QKV)
                 for r in linear(f"{src}attn.qkv", f"{dst}{proj}", transform=Packed(inner=LINEAR, index=i),
                                 bias_transform=Packed(inner=FLATTEN, index=i)))


def _swin(patch: str, patch_norm: str, final_norm: str, blocks, merges, names: dict[str, str],
          qkv) -> tuple[Rule, ...]:
    """blocks(s) / merges(s): the source prefix of stage s's blocks (with {layer}) / patch merging."""
    rules = [*linear(patch, "embeddings/patch_embeddings", transform=CONV), *norm(patch_norm, "embeddings/norm"),
             *norm(final_norm, "layernorm")]
    for s in range(SWIN_STAGES):
        src, dst = blocks(s), f"encoder/layers_{s}/blocks/"
        rules += [*qkv(src, f"{dst}attention/"),
                  *linear(f"{src}{names['out']}", f"{dst}attention/o_proj", transform=LINEAR_FROM_HEADS),
                  Rule(f"{src}{names['table']}", f"{dst}relative_position_bias_table"),
                  *norm(f"{src}{names['norm1']}", f"{dst}layernorm_before"),
                  *norm(f"{src}{names['norm2']}", f"{dst}layernorm_after"),
                  *linear(f"{src}{names['fc1']}", f"{dst}mlp/fc1"),
                  *linear(f"{src}{names['fc2']}", f"{dst}mlp/fc2")]
        if s < SWIN_STAGES - 1:
            rules += [*linear(f"{merges(s)}reduction", f"encoder/layers_{s}/downsample/reduction", bias=False),
                      *norm(f"{merges(s)}norm", f"encoder/layers_{s}/downsample/norm")]
    return tuple(rules)


SWIN_HF_BODY = _swin("embeddings.patch_embeddings.projection", "embeddings.norm", "layernorm",
                     lambda s: f"encoder.layers.{s}.blocks.{{layer}}.", lambda s: f"encoder.layers.{s}.downsample.",
                     _HF_SWIN_BLOCK, _hf_swin_qkv)


def swin_torchvision(features: str, final_norm: str) -> tuple[Rule, ...]:
    """torchvision `SwinTransformer`: features.0 = conv + permute + norm, features.{1,3,5,7} the
    stages' blocks, features.{2,4,6} the patch mergings; `norm` after the last stage."""
    return _swin(f"{features}0.0", f"{features}0.2", final_norm, lambda s: f"{features}{2 * s + 1}.{{layer}}.",
                 lambda s: f"{features}{2 * s + 2}.", _TORCHVISION_SWIN_BLOCK, _torchvision_swin_qkv)


# Hub checkpoints still carry the relative-position index buffers; they are computed from the window.
_SWIN_BUFFERS = (r".*relative_position_index$",)
SWIN_FORMATS = (
    # SwinModel, as transformers (4 and 5) writes it.
    Format("swin", SWIN_HF_BODY, ignore=_SWIN_BUFFERS),
    # SwinForImageClassification (e.g. microsoft/swin-base-patch4-window7-224): its classifier is dropped.
    Format("swin_image_classification", prefixed(SWIN_HF_BODY, "swin.", ""),
           ignore=_SWIN_BUFFERS + (r"^classifier\..*",)),
)

# --- FaceXFormer release: torch.load(file)["state_dict_backbone"] -----------------------------
# torchvision swin_b minus its head: backbone.0 = features, backbone.1 = the final norm. The
# projector is Omni-Emotion's, not the release's: the converter initialises it unless given.
FACEXFORMER_FUSION = (
    *(r for i in range(SWIN_STAGES) for r in linear(f"linear_c.{i}.proj", f"linear_c_{i}")),
    Rule("linear_fuse.weight", "linear_fuse/kernel", CONV),
    *prefixed(_PROJECTOR, "face_projector.", "projector"),
)
FACEXFORMER_FORMATS = (
    Format("facexformer", (*prefixed(swin_torchvision("backbone.0.", "backbone.1"), "", "backbone"),
                           *FACEXFORMER_FUSION),
           ignore=_SWIN_BUFFERS + (r"^face_decoder\..*", r"^pe_layer\..*")),
)


# --- Omni-Emotion (the project's own safetensors layout; no transformers class holds it) ------
# Each part keeps the key names of its own release so that a reader of one part's checkpoints
# recognises it: LLaVA-OneVision as transformers 5 writes it (vision_tower.*,
# multi_modal_projector.*, image_newline, language_model.model.*, language_model.lm_head.*),
# the Whisper encoder under audio_tower.*, the FaceXFormer encoder under face_tower.* (its Swin
# backbone in transformers' SwinModel names, face_tower.backbone.*: torchvision's packed qkv
# cannot be written back one tensor at a time; linear_c.*, linear_fuse as the release); then
# the new parts: audio_projector.linear_{1,2}.*, face_tower.face_projector.linear_{1,2}.*,
# frame_embedding [frames, hidden] and, for frame_cross_attention only,
# face_cross_attention.{query_norm,key_value_norm,attention.{q,k,v,o}_proj}.*.
OMNI_EMOTION = Format("omni_emotion", (
    *LLAVA_ONEVISION_FORMATS[0].rules,
    *prefixed(WHISPER_ENCODER_BODY, "audio_tower.", "audio_encoder"),
    *prefixed(_PROJECTOR, "audio_projector.", "audio_projector/mlp"),
    *prefixed(SWIN_HF_BODY, "face_tower.backbone.", "face_encoder/backbone"),
    *prefixed(FACEXFORMER_FUSION, "face_tower.", "face_encoder"),
    Rule("frame_embedding", "frame_embedding"),
    *norm("face_cross_attention.query_norm", "face_cross_attention/query_norm"),
    *norm("face_cross_attention.key_value_norm", "face_cross_attention/key_value_norm"),
    *_attention("face_cross_attention.attention", "face_cross_attention/attention", "o_proj", out_bias=True),
), ignore=QWEN2.ignore)


# --- RetinaFace (biubug6/Pytorch_Retinaface's mobilenet0.25_Final.pth and Resnet50_Final.pth) --
# Keys as the release's state dict names them, with each BatchNorm folded into the convolution
# before it (conversion/retinaface.py presents a checkpoint that way: `X.weight` folded and a
# `X.bias`, the BatchNorm's keys gone). Both backbones in one table: a checkpoint matches one.
RETINAFACE_HEADS = {"ClassHead": "class_head", "BboxHead": "bbox_head", "LandmarkHead": "landmark_head"}


def _conv(src: str, dst: str) -> tuple[Rule, ...]:
    return linear(src, dst, transform=CONV)


def _retinaface_mobilenet() -> tuple[Rule, ...]:
    rules = list(_conv("body.stage1.0.0", "body/stage1_0"))
    for stage, blocks in MOBILENET_STAGES.items():
        for i in range(1 if stage == "stage1" else 0, len(blocks) + (stage == "stage1")):
            rules += [*_conv(f"body.{stage}.{i}.0", f"body/{stage}_{i}/depthwise"),
                      *_conv(f"body.{stage}.{i}.3", f"body/{stage}_{i}/pointwise")]
    return tuple(rules)


def _retinaface_resnet50() -> tuple[Rule, ...]:
    rules = list(_conv("body.conv1", "body/conv1"))
    for layer, (_, blocks, _) in enumerate(RESNET50_LAYERS, start=1):
        for i in range(blocks):
            src, dst = f"body.layer{layer}.{i}.", f"body/layer{layer}_{i}/"
            rules += [r for c in ("conv1", "conv2", "conv3") for r in _conv(src + c, dst + c)]
            if i == 0:
                rules += _conv(src + "downsample.0", dst + "downsample")
    return tuple(rules)


RETINAFACE_BODY = (
    *_retinaface_mobilenet(),
    *_retinaface_resnet50(),
    *(
        r
        for name in ("output1", "output2", "output3", "merge1", "merge2")
        for r in _conv(f"fpn.{name}.0", f"fpn/{name}")
    ),
    *(
        r
        for level in (1, 2, 3)
        for name in ("conv3X3", "conv5X5_1", "conv5X5_2", "conv7X7_2", "conv7x7_3")
        for r in _conv(f"ssh{level}.{name}.0", f"ssh{level}/{name}")
    ),
    *(
        r
        for head, dst in RETINAFACE_HEADS.items()
        for i in range(3)
        for r in _conv(f"{head}.{i}.conv1x1", f"{dst}_{i}")
    ),
)
RETINAFACE_FORMATS = (
    Format("retinaface", RETINAFACE_BODY),
    # saved from torch.nn.DataParallel, as some of the release's files are
    Format("retinaface_data_parallel", prefixed(RETINAFACE_BODY, "module.", "")),
)


# --- Which formats each model family reads (the best-matching one) and writes ------------------
READS: dict[str, tuple[Format, ...]] = {
    "qwen2": (QWEN2,), "siglip_vision_model": SIGLIP_VISION_FORMATS, "llava_onevision": LLAVA_ONEVISION_FORMATS,
    "whisper": WHISPER_FORMATS, "swin": SWIN_FORMATS, "facexformer": FACEXFORMER_FORMATS,
    "retinaface": RETINAFACE_FORMATS, "omni_emotion": (OMNI_EMOTION,),
}
# `omni-jax export`'s namings, preferred first: for models transformers has, those `from_pretrained`
# reads. The FaceXFormer release is a torch file without config.json (torchvision's packed qkv
# cannot be written back one tensor at a time: it is exported inside an Omni-Emotion checkpoint),
# and RetinaFace's has nothing to be exported to.
WRITES: dict[str, tuple[str, ...]] = {
    "qwen2": ("qwen2",), "siglip_vision_model": ("siglip_vision_model", "siglip"),
    "llava_onevision": ("llava_onevision", "llava_onevision_hub", "llava_onevision_v4"),
    "whisper": ("whisper", "whisper_generation", "whisper_encoder"), "swin": ("swin", "swin_image_classification"),
    "facexformer": (), "retinaface": (), "omni_emotion": ("omni_emotion",),
}
# config.json's model_type → the family converting it ("siglip" is the dual tower: its vision
# half is converted; "llava_qwen" is the original LLaVA-NeXT/OneVision release).
HF_MODEL_TYPES = {"qwen2": "qwen2", "siglip_vision_model": "siglip_vision_model", "siglip": "siglip_vision_model",
                  "llava_onevision": "llava_onevision", "llava_qwen": "llava_onevision", "whisper": "whisper",
                  "swin": "swin", "omni_emotion": "omni_emotion"}


def family_for_hf_config(hf_config: dict[str, Any]) -> tuple[registry.ModelFamily, ml_collections.ConfigDict]:
    """The family and model config of a Hugging Face config.json."""
    model_type = hf_config.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise CheckpointRefused(f"unsupported model_type {model_type!r} in config.json; "
                                f"supported: {sorted(HF_MODEL_TYPES)}")
    family = registry.FAMILIES[HF_MODEL_TYPES[model_type]]
    return family, family.config_from_hf(hf_config)
