"""Swin v1 backbone configs: `get_config("base" | "tiny")`, one schema for both.

"base" is torchvision's swin_b, FaceXFormer's backbone (224 px, window 7: the last stage's 7×7
grid equals the window). "tiny" keeps that property at 96 px with a window of 3."""
import ml_collections

from omni_jax.models import swin

VARIANTS = {
    "base": swin.SWIN_B,
    "tiny": dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=3, patch_size=4,
                 image_size=96),
}


def get_config(variant: str = "base") -> ml_collections.ConfigDict:
    cfg = swin.config_from_hf(VARIANTS[variant])
    cfg.update(dtype="bfloat16", param_dtype="float32", remat_policy="full")
    return cfg
