"""Face encoder configs: `get_config("base" | "tiny")` — FaceXFormer (Swin-B + fusion) with
Omni-Emotion's 14×14 face tokens and a projector to Qwen2-7B's width; "tiny" for tests."""
import ml_collections

from configs import swin as swin_configs
from omni_jax.models import facexformer

VARIANTS = {"base": ("base", 14, 3584), "tiny": ("tiny", 6, 64)}


def get_config(variant: str = "base") -> ml_collections.ConfigDict:
    backbone, face_grid, llm_width = VARIANTS[variant]
    cfg = facexformer.release_config(face_grid, llm_width, swin_configs.get_config(backbone))
    cfg.update(dtype="bfloat16", param_dtype="float32")
    return cfg
