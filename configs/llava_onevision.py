"""LLaVA-OneVision configs: `get_config("7b" | "tiny")` (llava-onevision-qwen2-7b-ov)."""
import ml_collections

from configs import qwen2, siglip

VARIANTS = {"7b": ("7b", "so400m", 151646, 151647), "tiny": ("tiny", "tiny", 150, 151)}


def get_config(variant: str = "7b") -> ml_collections.ConfigDict:
    text, vision, image_token_id, video_token_id = VARIANTS[variant]
    return ml_collections.ConfigDict(dict(
        text=qwen2.get_config(text),
        vision=siglip.get_config(vision),
        vision_feature_layers=[-1],
        vision_feature_select_strategy="full",
        projector_hidden_act="gelu",
        projector_bias=True,
        image_token_id=image_token_id,
        video_token_id=video_token_id,
    ))
