"""SigLIP vision tower configs: `get_config("so400m" | "tiny")`.

"so400m" is the tower LLaVA-OneVision uses: 26 of so400m-patch14-384's 27 layers (it reads
layer 26's output), without the attention-pooling head."""
import ml_collections

VARIANTS = {
    "so400m": dict(hidden_size=1152, intermediate_size=4304, num_layers=26, num_heads=16, image_size=384,
                   patch_size=14, use_head=False),
    "tiny": dict(hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, image_size=56, patch_size=14,
                 use_head=False),
}


def get_config(variant: str = "so400m") -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        **VARIANTS[variant],
        num_channels=3,
        layer_norm_eps=1e-6,
        hidden_act="gelu_pytorch_tanh",
        dtype="bfloat16",
        param_dtype="float32",
        remat_policy="full",
    ))
