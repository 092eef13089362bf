"""Dense and embedding layers whose parameters carry logical axis names."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

Initializer = Callable[..., jax.Array]
default_kernel_init = nn.initializers.normal(stddev=0.02)


def dot_result_type(dtype: Any) -> Any:
    """The type to ask a product of `dtype` operands for: float32 below 32 bits, on XLA:CPU.

    Every back end accumulates bf16 products in float32 and rounds the result; asking for the
    float32 result explicitly is what sends bf16 operands to YNNPACK's bf16 kernels on the CPU
    (for a bf16 result XLA:CPU converts both operands to float32 and multiplies in float32: 2x
    slower than float32 alone on AVX512-BF16). Elsewhere the result stays in `dtype`, as the
    accelerators' own fusions expect.
    """
    return jnp.float32 if jnp.dtype(dtype).itemsize < 4 and jax.default_backend() == "cpu" else None


def layer_dtypes(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The `dtype` (computation) and `param_dtype` arguments of a tower's layers, from its config."""
    return dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))


def _as_tuple(x: int | Sequence[int]) -> tuple[int, ...]:
    return tuple(x) if isinstance(x, Sequence) else (x,)


def _normalize_axes(axes: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    return tuple(a if a >= 0 else ndim + a for a in axes)


class DenseGeneral(nn.Module):
    """y = x · kernel (+ bias), contracting `axis` of x with the kernel's leading axes.

    The kernel has shape `[*x.shape[axis], *features]`, e.g. `[embed, heads, head_dim]` for a
    query projection, so that heads can be sharded by name. `kernel_axes` names every kernel
    dimension; the bias takes the names of the output dimensions.
    """

    features: int | Sequence[int]
    kernel_axes: Sequence[str | None]
    axis: int | Sequence[int] = -1
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = default_kernel_init
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = _as_tuple(self.features)
        axis = _normalize_axes(_as_tuple(self.axis), x.ndim)
        kernel_shape = tuple(x.shape[a] for a in axis) + features
        if len(self.kernel_axes) != len(kernel_shape):
            raise ValueError(f"kernel_axes {self.kernel_axes} do not name kernel shape {kernel_shape}")
        kernel = self.param(
            "kernel", nn.with_logical_partitioning(self.kernel_init, tuple(self.kernel_axes)),
            kernel_shape, self.param_dtype)
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        contract = (axis, tuple(range(len(axis))))
        y = jax.lax.dot_general(x, kernel, (contract, ((), ())), precision=self.precision,
                                preferred_element_type=dot_result_type(self.dtype))
        if self.use_bias:
            bias_axes = tuple(self.kernel_axes[len(axis):])
            bias = self.param(
                "bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), bias_axes),
                features, self.param_dtype)
            y = y + bias.astype(y.dtype)
        return y.astype(self.dtype)


class Embed(nn.Module):
    """Token embedding table `[vocab, embed]`; `attend` gives tied-head logits."""

    num_embeddings: int
    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    axes: tuple[str, str] = ("vocab", "embed")
    embedding_init: Initializer = default_kernel_init

    def setup(self):
        self.embedding = self.param(
            "embedding", nn.with_logical_partitioning(self.embedding_init, self.axes),
            (self.num_embeddings, self.features), self.param_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """ids: [batch, length] int → [batch, length, embed].

        The table stays where it is stored (vocab on `tensor`, embed on `fsdp`): the ids are
        gathered over fsdp (integers: cheap), each device looks up its vocabulary rows for its
        embedding columns (other rows masked, summed over `tensor`), and one all-to-all over
        fsdp returns the batch split. Left to itself the partitioner replicated the whole table
        at every lookup ("involuntary full rematerialization": 2 GiB per device for the 7B).
        """
        ids = nn.with_logical_constraint(ids, ("activation_replica_batch", None))
        out = jnp.take(self.embedding.astype(self.dtype), ids, axis=0)
        return nn.with_logical_constraint(out, ("activation_replica_batch", None, self.axes[1]))

    def attend(self, x: jax.Array) -> jax.Array:
        """x: [batch, length, embed] → logits [batch, length, vocab]."""
        return jnp.einsum("...e,ve->...v", x.astype(self.dtype), self.embedding.astype(self.dtype),
                          preferred_element_type=dot_result_type(self.dtype)).astype(self.dtype)


class Conv(nn.Module):
    """Channels-last convolution `[batch, *spatial, in] → [batch, *spatial', features]`.

    The kernel is `[*kernel_size, in / groups, features]` (torch's `[out, in / groups, *k]`
    transposed), named by `kernel_axes`; padding is per spatial dim as torch's symmetric
    `padding=p`; `groups` as torch's (= in = features: depthwise).
    """

    features: int
    kernel_size: Sequence[int]
    kernel_axes: Sequence[str | None]
    strides: Sequence[int] | None = None
    padding: Sequence[int] | None = None
    use_bias: bool = True
    groups: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = default_kernel_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        rank = len(self.kernel_size)
        kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, tuple(self.kernel_axes)),
                            (*self.kernel_size, x.shape[-1] // self.groups, self.features), self.param_dtype)
        padding = [(p, p) for p in (self.padding or (0,) * rank)]
        strides = tuple(self.strides or (1,) * rank)
        spatial = "".join("HWD"[:rank])
        taps = int(np.prod(self.kernel_size))
        few_inputs = self.groups == 1 and 1 < taps and taps * x.shape[-1] <= SHIFTED_MAX_TERMS
        if jax.default_backend() == "cpu" and (self.groups == x.shape[-1] == self.features or few_inputs):
            accumulate = jnp.promote_types(self.dtype, jnp.float32)  # elementwise sums: never in bf16
            y = shifted_conv(x.astype(accumulate), kernel.astype(accumulate), strides, padding)
        elif all(k == 1 for k in self.kernel_size) and self.groups == 1 and not any(self.padding or ()):
            # a 1×1 convolution is a matrix product: XLA:CPU runs it 2–6× faster as one (bench_faces.py)
            x = x[(slice(None), *(slice(None, None, s) for s in strides))]
            y = jax.lax.dot_general(x.astype(self.dtype), kernel.reshape(kernel.shape[-2:]).astype(self.dtype),
                                    (((x.ndim - 1,), (0,)), ((), ())),
                                    preferred_element_type=dot_result_type(self.dtype))
        else:
            y = jax.lax.conv_general_dilated(
                x.astype(self.dtype), kernel.astype(self.dtype), window_strides=strides, padding=padding,
                dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
                feature_group_count=self.groups, preferred_element_type=dot_result_type(self.dtype))
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                                   (self.kernel_axes[-1],)),
                              (self.features,), self.param_dtype)
            y = y + bias.astype(y.dtype)
        return y.astype(self.dtype)


# XLA:CPU runs grouped convolutions 20–40× slower, and a 3×3 convolution of an RGB image 2.5×
# slower, than the same sums of shifted, scaled copies of the input, which it fuses (measured for
# RetinaFace, bench_faces.py); beyond a 3×3 over 3 inputs (27 terms) the sums lose.
SHIFTED_MAX_TERMS = 27


def shifted_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                 padding: Sequence[tuple[int, int]]) -> jax.Array:
    """A depthwise convolution (kernel [*k, 1, channels]) or one of few input channels (kernel
    [*k, in, out]) as a sum over the kernel's offsets (and inputs) of shifted, scaled copies of
    x [batch, *spatial, channels]."""
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    window, inputs = kernel.shape[:-2], kernel.shape[-2]
    out_shape = [(n - k) // s + 1 for n, k, s in zip(x.shape[1:-1], window, strides)]
    out = None
    for offset in np.ndindex(*window):
        index = tuple(slice(o, o + s * (n - 1) + 1, s) for o, n, s in zip(offset, out_shape, strides))
        shifted = x[(slice(None), *index)]
        terms = [shifted * kernel[offset][0]] if inputs == 1 else [shifted[..., c:c + 1] * kernel[offset][c]
                                                                   for c in range(inputs)]
        for term in terms:
            out = term if out is None else out + term
    return out
