"""Attention against a direct NumPy softmax, chunked and whole, with GQA and masks."""
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax.layers.attention import dot_product_attention, make_causal_mask
from tests.conftest import rel_err


def _reference(q, k, v, mask):
    groups = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
        logits = np.where(mask, logits, -1e30)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("q_len,chunk", [(37, 256), (300, 64), (300, 100)])
def test_attention_equals_reference(q_len, chunk, masked):
    rng = np.random.RandomState(0)
    q = rng.randn(2, q_len, 4, 8).astype(np.float32)
    k, v = rng.randn(2, q_len, 2, 8).astype(np.float32), rng.randn(2, q_len, 2, 8).astype(np.float32)
    mask = None
    if masked:
        valid = np.ones((2, q_len), bool)
        valid[1, :5] = False  # left padding: rows 0-4 of batch 1 see nothing
        mask = np.asarray(make_causal_mask(jnp.asarray(valid), jnp.arange(q_len)))
    ours = np.asarray(dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                            None if mask is None else jnp.asarray(mask), query_chunk=chunk))
    assert np.isfinite(ours).all()
    ref = _reference(q, k, v, mask)
    rows = np.ones((2, q_len), bool) if mask is None else mask[:, 0].any(-1)
    assert rel_err(ours[rows], ref[rows]) < 1e-5
