"""Whisper encoder configs: `get_config("large-v3" | "base" | "tiny")`, one schema for every size."""
import ml_collections

VARIANTS = {
    "large-v3": dict(num_mel_bins=128, hidden_size=1280, intermediate_size=5120, num_layers=32, num_heads=20),
    "base": dict(num_mel_bins=80, hidden_size=512, intermediate_size=2048, num_layers=6, num_heads=8),
    "tiny": dict(num_mel_bins=80, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4),
}


def get_config(variant: str = "large-v3") -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        **VARIANTS[variant],
        max_source_positions=1500,
        activation_function="gelu",
        layer_norm_eps=1e-5,
        dtype="bfloat16",
        param_dtype="float32",
        remat_policy="full",
    ))
