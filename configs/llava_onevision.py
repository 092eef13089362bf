"""LLaVA-OneVision configs: `get_config("7b" | "tiny")` (llava-onevision-qwen2-7b-ov)."""
import ml_collections

from . import qwen2, siglip

VARIANTS = {
    "7b": dict(text="7b", vision="so400m", image_token_id=151646, video_token_id=151647),
    "tiny": dict(text="tiny", vision="tiny", image_token_id=150, video_token_id=151),
}


def get_config(variant: str = "7b") -> ml_collections.ConfigDict:
    variant = VARIANTS[variant]
    return ml_collections.ConfigDict(dict(
        text=qwen2.get_config(variant["text"]),
        vision=siglip.get_config(variant["vision"]),
        vision_feature_layers=[-1],
        vision_feature_select_strategy="full",
        projector_hidden_act="gelu",
        projector_bias=True,
        image_token_id=variant["image_token_id"],
        video_token_id=variant["video_token_id"],
    ))
