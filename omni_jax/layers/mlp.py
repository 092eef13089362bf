"""Feed-forward blocks: SwiGLU (Qwen2) and two-layer GELU MLPs (SigLIP, projectors)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from omni_jax.layers.linears import DenseGeneral

ACTIVATIONS = {
    "silu": jax.nn.silu,
    # PyTorch's exact GELU, x·(1 + erf(x/√2))/2: XLA's erf runs 2x faster on the CPU than the
    # erfc of jax.nn.gelu(approximate=False), both within 1e-7 of the float64 value.
    "gelu": lambda x: 0.5 * x * (1 + jax.lax.erf(x * 0.7071067811865476)),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
}


class GatedMlp(nn.Module):
    """down_proj(act(gate_proj(x)) * up_proj(x)); x: [batch, length, embed]."""

    intermediate_size: int
    activation: str = "silu"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = lambda features, axes, name: DenseGeneral(
            features, axes, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        gate = dense(self.intermediate_size, ("embed", "mlp"), "gate_proj")(x)
        up = dense(self.intermediate_size, ("embed", "mlp"), "up_proj")(x)
        hidden = ACTIVATIONS[self.activation](gate) * up
        hidden = nn.with_logical_constraint(hidden, ("activation_batch", "activation_length", "activation_mlp"))
        return dense(x.shape[-1], ("mlp", "embed"), "down_proj")(hidden)


class Mlp(nn.Module):
    """fc2(act(fc1(x))) with biases; `out_features` defaults to the input width.

    Serves the SigLIP/Whisper MLPs and the modality projectors, which is why the layer names
    are configurable (`fc1`/`fc2` in the towers, `linear_1`/`linear_2` in LLaVA's projector).
    """

    hidden_features: int
    out_features: int | None = None
    activation: str = "gelu"
    use_bias: bool = True
    names: tuple[str, str] = ("fc1", "fc2")
    in_axis_name: str = "embed"
    out_axis_name: str = "embed"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out_features = self.out_features or x.shape[-1]
        hidden = DenseGeneral(self.hidden_features, (self.in_axis_name, "mlp"), use_bias=self.use_bias,
                              dtype=self.dtype, param_dtype=self.param_dtype, name=self.names[0])(x)
        hidden = ACTIVATIONS[self.activation](hidden)
        return DenseGeneral(out_features, ("mlp", self.out_axis_name), use_bias=self.use_bias,
                            dtype=self.dtype, param_dtype=self.param_dtype, name=self.names[1])(hidden)
