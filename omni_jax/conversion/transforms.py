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

    def to_flax(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return x.reshape(shape)

    def to_torch(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return x

    def torch_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        spec = jax.ShapeDtypeStruct(shape, np.float32)
        return tuple(jax.eval_shape(lambda x: self.to_torch(x, shape), spec).shape)


@dataclasses.dataclass(frozen=True)
class Linear(Transform):
    """torch `[out, in]` ↔ flax `[*in_dims, *out_dims]` (the first `num_in` flax axes are inputs)."""

    name: str = "linear"
    num_in: int = 1

    def to_flax(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return x.T.reshape(shape)

    def to_torch(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return x.reshape(math.prod(shape[:self.num_in]), math.prod(shape[self.num_in:])).T


@dataclasses.dataclass(frozen=True)
class Flatten(Transform):
    """torch `[heads * head_dim]` ↔ flax `[heads, head_dim]` (biases of head-split projections)."""

    name: str = "flatten"

    def to_torch(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return x.reshape(-1)


@dataclasses.dataclass(frozen=True)
class Conv(Transform):
    """torch `[out, in, *kernel]` ↔ flax `[*kernel, in, out]` (any number of spatial dims)."""

    name: str = "conv"

    def to_flax(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        spatial = tuple(range(2, x.ndim))
        return x.transpose(*spatial, 1, 0)

    def to_torch(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        rank = x.ndim - 2
        return x.transpose(rank + 1, rank, *range(rank))


@dataclasses.dataclass(frozen=True)
class Packed(Transform):
    """Block `index` of `count` equal row blocks of a packed torch tensor, converted by `inner`
    (torchvision's attention `qkv` Linear stacks q, k and v on its output rows).

    One rule per block reads the same source key. Writing one block back would need the others,
    so packed sources are import-only: export writes formats that keep q, k and v apart."""

    name: str = "packed"
    inner: Transform = Transform()
    index: int = 0
    count: int = 3

    def to_flax(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        rows = x.shape[0] // self.count
        return self.inner.to_flax(x[self.index * rows:(self.index + 1) * rows], shape)

    def to_torch(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        raise NotImplementedError(f"a {self.name} block cannot be written back on its own")

    def torch_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        block = self.inner.torch_shape(shape)
        return (block[0] * self.count, *block[1:])


IDENTITY = Transform()
LINEAR = Linear()
LINEAR_FROM_HEADS = Linear(name="linear_from_heads", num_in=2)
FLATTEN = Flatten()
CONV = Conv()
