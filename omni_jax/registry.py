"""Which Flax module, config translation and dummy inputs serve each model type."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections

from omni_jax.models import facexformer, llava_onevision, omni_emotion, qwen2, retinaface, siglip, swin, whisper


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    model_type: str
    module: type[nn.Module]
    config_from_hf: Callable[[dict[str, Any]], ml_collections.ConfigDict]
    config_to_hf: Callable[[ml_collections.ConfigDict], dict[str, Any]]
    dummy_inputs: Callable[[ml_collections.ConfigDict], dict[str, Any]]


def _family(model_type: str, module: Any, cls: type[nn.Module]) -> ModelFamily:
    return ModelFamily(model_type, cls, module.config_from_hf, module.config_to_hf, module.dummy_inputs)


# The checkpoint formats each family reads and writes are conversion's (conversion.formats.READS).
FAMILIES = {family.model_type: family for family in (
    _family("qwen2", qwen2, qwen2.Qwen2ForCausalLM),
    _family("siglip_vision_model", siglip, siglip.SiglipVisionModel),
    _family("llava_onevision", llava_onevision, llava_onevision.LlavaOnevisionForConditionalGeneration),
    _family("whisper", whisper, whisper.WhisperEncoder),
    _family("swin", swin, swin.SwinModel),
    _family("facexformer", facexformer, facexformer.FaceXFormerEncoder),  # the face encoder
    _family("retinaface", retinaface, retinaface.RetinaFace),  # the face detector
    _family("omni_emotion", omni_emotion, omni_emotion.OmniEmotion),  # assembled from converted parts
)}


def to_config(config: dict[str, Any] | ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
    return ml_collections.FrozenConfigDict(config)


def build(family: ModelFamily, config: Any) -> nn.Module:
    return family.module(to_config(config))


# Fields that choose how attention runs, never a parameter's shape, dtype or axes: one trace
# serves every value they take, and their absence (a training run asks with its training config
# and with its checkpoint's, which differ only there, or lacks them), traced with the defaults.
HOW_ATTENTION_RUNS = ("attention_padding", "attention_impl")


def _parameter_fields(config: dict[str, Any]) -> dict[str, Any]:
    """`config` without HOW_ATTENTION_RUNS's fields, wherever they occur."""
    return {k: _parameter_fields(v) if isinstance(v, dict) else v for k, v in config.items()
            if k not in HOW_ATTENTION_RUNS}


def abstract_params(family: ModelFamily, config: Any, boxed: bool = False) -> Any:
    """The parameter tree as ShapeDtypeStructs; `boxed` keeps the logical-axis metadata."""
    key = to_config(_parameter_fields(to_config(config).to_dict()))
    params = jax.tree.map(lambda x: x, _abstract_params(family, key))  # a copy: callers own it
    return params if boxed else nn.unbox(params)


@functools.lru_cache(maxsize=16)
def _abstract_params(family: ModelFamily, config: ml_collections.FrozenConfigDict) -> Any:
    # Tracing a whole model's init takes seconds (the tiny Omni-Emotion's 3 s on a CPU); a run
    # asks for the same tree several times (restore target, shardings, the trainer's state).
    model = build(family, config)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), **family.dummy_inputs(config)))["params"]


def init_params(family: ModelFamily, config: Any, mesh: jax.sharding.Mesh, seed: int = 0) -> Any:
    """Freshly initialised parameters created directly in their shards on `mesh` (`init` jitted
    with the rules' output shardings): no device and no host ever holds a whole copy."""
    from omni_jax import sharding

    model = build(family, config)
    shardings = sharding.param_shardings(abstract_params(family, config, boxed=True), mesh)
    init = lambda key: nn.unbox(model.init(key, **family.dummy_inputs(config))["params"])
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
        return jax.jit(init, out_shardings=shardings)(jax.random.key(seed))
