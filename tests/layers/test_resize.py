import jax.numpy as jnp
import numpy as np
import pytest
import torch

from omni_jax.layers import adaptive_avg_pool, bilinear_resize, resize_then_pool
from tests.conftest import rel_err


@pytest.mark.parametrize("in_hw,out_hw", [((27, 27), (14, 14)), ((4, 4), (2, 2)), ((5, 7), (3, 4)),
                                          ((7, 7), (56, 56)), ((14, 14), (56, 56)), ((3, 3), (3, 3))])
def test_bilinear_equals_torch_interpolate(in_hw, out_hw):
    x = np.random.RandomState(0).randn(2, *in_hw, 5).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=out_hw, mode="bilinear",
                                          align_corners=False).permute(0, 2, 3, 1).numpy()
    ours = np.asarray(bilinear_resize(jnp.asarray(x), out_hw))
    assert ours.shape == ref.shape
    # torch's kernel itself is ~2e-6 away from the float64 result; ours is ~1e-7 away.
    assert rel_err(ours, ref) < 1e-5


def test_jax_image_resize_differs_when_downsampling():
    """Why bilinear_resize exists: jax.image.resize antialiases, torch does not."""
    import jax

    x = np.random.RandomState(1).randn(1, 27, 27, 3).astype(np.float32)
    ours = np.asarray(bilinear_resize(jnp.asarray(x), (14, 14)))
    theirs = np.asarray(jax.image.resize(jnp.asarray(x), (1, 14, 14, 3), "bilinear"))
    assert rel_err(theirs, ours) > 1e-2


@pytest.mark.parametrize("in_hw,out_hw", [((56, 56), (14, 14)), ((24, 24), (5, 7)), ((7, 9), (7, 9)),
                                          ((10, 3), (4, 2))])
def test_adaptive_avg_pool_equals_torch(in_hw, out_hw):
    x = np.random.RandomState(2).randn(2, *in_hw, 5).astype(np.float32)
    ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), out_hw)
    ours = np.asarray(adaptive_avg_pool(jnp.asarray(x), out_hw))
    assert ours.shape == (2, *out_hw, 5)
    assert rel_err(ours, ref.permute(0, 2, 3, 1).numpy()) < 1e-6


@pytest.mark.parametrize("in_hw,size,grid", [((7, 7), (56, 56), (14, 14)), ((28, 28), (56, 56), (14, 14)),
                                             ((5, 6), (24, 20), (5, 7))])
def test_resize_then_pool_equals_torch_interpolate_then_pool(in_hw, size, grid):
    x = np.random.RandomState(0).randn(2, *in_hw, 5).astype(np.float32)
    resized = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode="bilinear",
                                              align_corners=False)
    ref = torch.nn.functional.adaptive_avg_pool2d(resized, grid).permute(0, 2, 3, 1).numpy()
    assert rel_err(resize_then_pool(jnp.asarray(x), size, grid), ref) < 1e-5
