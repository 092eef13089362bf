"""Tensor layout changes between PyTorch and our Flax modules.

Each transform maps a PyTorch tensor to the Flax layout given the Flax (per-layer) shape, and
back. They use only `.T`, `.reshape` and `.transpose`, so they run on numpy arrays and on
`jax.ShapeDtypeStruct`s (through `jax.eval_shape`) to derive expected shapes before any
data is read.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Transform:
    name: str = "identity"

    def to_flax(self, x, shape: tuple[int, ...]):
        return x.reshape(shape)

    def to_torch(self, x, shape: tuple[int, ...]):
        return x

    def torch_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        spec = jax.ShapeDtypeStruct(shape, np.float32)
        return tuple(jax.eval_shape(lambda x: self.to_torch(x, shape), spec).shape)


@dataclasses.dataclass(frozen=True)
class Linear(Transform):
    """torch `[out, in]` ↔ flax `[*in_dims, *out_dims]` (the first `num_in` flax axes are inputs)."""

    name: str = "linear"
    num_in: int = 1

    def to_flax(self, x, shape):
        return x.T.reshape(shape)

    def to_torch(self, x, shape):
        return x.reshape(math.prod(shape[:self.num_in]), math.prod(shape[self.num_in:])).T


@dataclasses.dataclass(frozen=True)
class Flatten(Transform):
    """torch `[heads * head_dim]` ↔ flax `[heads, head_dim]` (biases of head-split projections)."""

    name: str = "flatten"

    def to_torch(self, x, shape):
        return x.reshape(-1)


@dataclasses.dataclass(frozen=True)
class Conv(Transform):
    """torch `[out, in, *kernel]` ↔ flax `[*kernel, in, out]` (any number of spatial dims)."""

    name: str = "conv"

    def to_flax(self, x, shape):
        spatial = tuple(range(2, x.ndim))
        return x.transpose(*spatial, 1, 0)

    def to_torch(self, x, shape):
        rank = x.ndim - 2
        return x.transpose(rank + 1, rank, *range(rank))


IDENTITY = Transform()
LINEAR = Linear()
LINEAR_FROM_HEADS = Linear(name="linear_from_heads", num_in=2)
FLATTEN = Flatten()
CONV = Conv()
