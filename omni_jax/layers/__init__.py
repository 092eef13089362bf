"""Blocks shared by every tower: dense, norms, rotary, attention, MLPs, resizing."""
from omni_jax.layers.attention import Attention, CausalMask, make_causal_mask
from omni_jax.layers.linears import Conv, DenseGeneral, Embed, layer_dtypes
from omni_jax.layers.mlp import GatedMlp, Mlp
from omni_jax.layers.norms import LayerNorm, RMSNorm
from omni_jax.layers.resize import adaptive_avg_pool, bilinear_resize, resize_then_pool
from omni_jax.layers.rotary import apply_rotary, rotary_cos_sin
from omni_jax.layers.scan import apply_layers, remat_policy, scan_layers

__all__ = [
    "Attention", "CausalMask", "Conv", "DenseGeneral", "Embed", "GatedMlp", "LayerNorm", "Mlp", "RMSNorm",
    "adaptive_avg_pool", "apply_layers", "apply_rotary", "bilinear_resize", "layer_dtypes", "make_causal_mask",
    "remat_policy", "resize_then_pool", "rotary_cos_sin", "scan_layers",
]
