"""Face encoder configs: `get_config("base" | "tiny")` — FaceXFormer (Swin-B + fusion) with
Omni-Emotion's 14×14 face tokens and a projector to Qwen2-7B's width; "tiny" for tests."""
import ml_collections

from omni_jax.models import facexformer

from . import swin as swin_configs

# backbone: configs/swin.py variant; face_grid: tokens per side; llm_width: the projector's output
VARIANTS = {"base": dict(backbone="base", face_grid=14, llm_width=3584),
            "tiny": dict(backbone="tiny", face_grid=6, llm_width=64)}


def get_config(variant: str = "base") -> ml_collections.ConfigDict:
    variant = VARIANTS[variant]
    cfg = facexformer.release_config(variant["face_grid"], variant["llm_width"],
                                     swin_configs.get_config(variant["backbone"]))
    cfg.update(dtype="bfloat16", param_dtype="float32")
    return cfg
