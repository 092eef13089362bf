"""Which Flax module, config translation and checkpoint formats serve each model type."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections

from omni_jax.conversion import formats
from omni_jax.errors import CheckpointRefused
from omni_jax.models import facexformer, llava_onevision, omni_emotion, qwen2, retinaface, siglip, swin, whisper


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    model_type: str
    module: type[nn.Module]
    config_from_hf: Callable[[dict[str, Any]], ml_collections.ConfigDict]
    config_to_hf: Callable[[ml_collections.ConfigDict], dict[str, Any]]
    formats: tuple[formats.Format, ...]
    dummy_inputs: Callable[[ml_collections.ConfigDict], dict[str, Any]]
    # formats export writes, preferred first: for models transformers has, those `from_pretrained` reads
    export_formats: tuple[str, ...]


FAMILIES = {
    "qwen2": ModelFamily("qwen2", qwen2.Qwen2ForCausalLM, qwen2.config_from_hf, qwen2.config_to_hf,
                         (formats.QWEN2,), qwen2.dummy_inputs, ("qwen2",)),
    "siglip_vision_model": ModelFamily("siglip_vision_model", siglip.SiglipVisionModel, siglip.config_from_hf,
                                       siglip.config_to_hf, formats.SIGLIP_VISION_FORMATS, siglip.dummy_inputs,
                                       ("siglip_vision_model", "siglip")),
    "llava_onevision": ModelFamily("llava_onevision", llava_onevision.LlavaOnevisionForConditionalGeneration,
                                   llava_onevision.config_from_hf, llava_onevision.config_to_hf,
                                   formats.LLAVA_ONEVISION_FORMATS, llava_onevision.dummy_inputs,
                                   ("llava_onevision", "llava_onevision_hub", "llava_onevision_v4")),
    "whisper": ModelFamily("whisper", whisper.WhisperEncoder, whisper.config_from_hf, whisper.config_to_hf,
                           formats.WHISPER_FORMATS, whisper.dummy_inputs,
                           ("whisper", "whisper_generation", "whisper_encoder")),
    "swin": ModelFamily("swin", swin.SwinModel, swin.config_from_hf, swin.config_to_hf, formats.SWIN_FORMATS,
                        swin.dummy_inputs, ("swin", "swin_image_classification")),
    # The FaceXFormer release is a torch file without config.json (convert/facexformer_to_orbax.py);
    # no transformers model holds it, and torchvision's packed qkv cannot be written back one
    # tensor at a time: it is exported only inside an Omni-Emotion checkpoint.
    "facexformer": ModelFamily("facexformer", facexformer.FaceXFormerEncoder, facexformer.config_from_hf,
                               facexformer.config_to_hf, formats.FACEXFORMER_FORMATS, facexformer.dummy_inputs, ()),
    # The face detector: the release's .pth files, an ONNX export or the bundled weights
    # (conversion/retinaface.py), BatchNorm folded; nothing to export it to.
    "retinaface": ModelFamily("retinaface", retinaface.RetinaFace, retinaface.config_from_hf, retinaface.config_to_hf,
                              formats.RETINAFACE_FORMATS, retinaface.dummy_inputs, ()),
    # Assembled from converted parts (omni-jax assemble); exported to, and converted from, the
    # project's own safetensors layout (formats.OMNI_EMOTION).
    "omni_emotion": ModelFamily("omni_emotion", omni_emotion.OmniEmotion, omni_emotion.config_from_hf,
                                omni_emotion.config_to_hf, (formats.OMNI_EMOTION,), omni_emotion.dummy_inputs,
                                ("omni_emotion",)),
}
# config.json model_type → family ("siglip" is the dual tower: its vision half is converted;
# "llava_qwen" is the original LLaVA-NeXT/OneVision release).
HF_MODEL_TYPES = {"qwen2": "qwen2", "siglip_vision_model": "siglip_vision_model", "siglip": "siglip_vision_model",
                  "llava_onevision": "llava_onevision", "llava_qwen": "llava_onevision", "whisper": "whisper",
                  "swin": "swin", "omni_emotion": "omni_emotion"}


def family_for_hf_config(hf_config: dict[str, Any]) -> tuple[ModelFamily, ml_collections.ConfigDict]:
    model_type = hf_config.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise CheckpointRefused(f"unsupported model_type {model_type!r} in config.json; supported: {sorted(HF_MODEL_TYPES)}")
    family = FAMILIES[HF_MODEL_TYPES[model_type]]
    return family, family.config_from_hf(hf_config)


def to_config(config: dict[str, Any] | ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
    return ml_collections.FrozenConfigDict(config)


def build(family: ModelFamily, config) -> nn.Module:
    return family.module(to_config(config))


def abstract_params(family: ModelFamily, config, boxed: bool = False) -> Any:
    """The parameter tree as ShapeDtypeStructs; `boxed` keeps the logical-axis metadata."""
    params = jax.tree.map(lambda x: x, _abstract_params(family, to_config(config)))  # a copy: callers own it
    return params if boxed else nn.unbox(params)


@functools.lru_cache(maxsize=16)
def _abstract_params(family: ModelFamily, config: ml_collections.FrozenConfigDict) -> Any:
    # Tracing a whole model's init takes seconds; a run asks for the same tree several times
    # (restore target, shardings, the trainer's state).
    model = build(family, config)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), **family.dummy_inputs(config)))["params"]


def init_params(family: ModelFamily, config, mesh: jax.sharding.Mesh, seed: int = 0) -> Any:
    """Freshly initialised parameters created directly in their shards on `mesh` (`init` jitted
    with the rules' output shardings): no device and no host ever holds a whole copy."""
    from omni_jax import sharding

    model = build(family, config)
    shardings = sharding.param_shardings(abstract_params(family, config, boxed=True), mesh)
    init = lambda key: nn.unbox(model.init(key, **family.dummy_inputs(config))["params"])
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
        return jax.jit(init, out_shardings=shardings)(jax.random.key(seed))
