"""Bilinear resizing that equals torch `interpolate(mode="bilinear", align_corners=False)`, and
adaptive average pooling that equals torch `adaptive_avg_pool2d`.

`jax.image.resize` antialiases when it downsamples, so it differs from torch for the 2×2
video pooling (27×27 → 14×14). Here each spatial axis is resized by a static
interpolation matrix, which is exact for up- and downsampling and maps onto the MXU.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] weights of torch's half-pixel bilinear rule (no antialias).

    Computed in float32 as torch's CPU kernel does, so the weights are bit-identical."""
    scale = np.float32(in_size / out_size)
    src = np.maximum(scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5),
                     np.float32(0.0))
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo.astype(np.float32)
    weights = np.zeros((out_size, in_size), np.float32)
    np.add.at(weights, (np.arange(out_size), lo), np.float32(1.0) - frac)
    np.add.at(weights, (np.arange(out_size), hi), frac)
    return weights


def _separable(x: jax.Array, rows: np.ndarray, cols: np.ndarray) -> jax.Array:
    """x: [batch, height, width, channels]; rows: [out_h, height]; cols: [out_w, width]."""
    x = jnp.einsum("oh,bhwc->bowc", jnp.asarray(rows, x.dtype), x)
    return jnp.einsum("pw,bowc->bopc", jnp.asarray(cols, x.dtype), x)


def bilinear_resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """x: [batch, height, width, channels] → [batch, size[0], size[1], channels]."""
    return _separable(x, bilinear_matrix(x.shape[1], size[0]), bilinear_matrix(x.shape[2], size[1]))


def half_size(height: int, width: int) -> tuple[int, int]:
    """The 2×2 pooling target of LLaVA-OneVision: ceil(h/2) × ceil(w/2)."""
    return math.ceil(height / 2), math.ceil(width / 2)


def adaptive_avg_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] weights of torch `adaptive_avg_pool`: output i averages the inputs
    floor(i * in / out) .. ceil((i + 1) * in / out) - 1 (equal bins when out divides in)."""
    weights = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start, end = (i * in_size) // out_size, -(-((i + 1) * in_size) // out_size)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def adaptive_avg_pool(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """x: [batch, height, width, channels] → [batch, size[0], size[1], channels], as torch
    `adaptive_avg_pool2d` (separable, so one static matrix per axis)."""
    return _separable(x, adaptive_avg_matrix(x.shape[1], size[0]), adaptive_avg_matrix(x.shape[2], size[1]))


def resize_then_pool(x: jax.Array, size: tuple[int, int], grid: tuple[int, int]) -> jax.Array:
    """`adaptive_avg_pool(bilinear_resize(x, size), grid)` without the resized map: both are
    linear along each axis, so their product is one [grid, in] matrix per axis.
    x: [batch, height, width, channels] → [batch, grid[0], grid[1], channels]."""
    rows = adaptive_avg_matrix(size[0], grid[0]) @ bilinear_matrix(x.shape[1], size[0])
    cols = adaptive_avg_matrix(size[1], grid[1]) @ bilinear_matrix(x.shape[2], size[1])
    return _separable(x, rows, cols)
