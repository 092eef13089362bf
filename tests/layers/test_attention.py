"""Attention against a direct NumPy softmax, chunked and whole, with GQA and masks; the fused
kernels against the XLA path; which kernel each backend picks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax import sharding
from omni_jax.layers import attention
from omni_jax.layers.attention import (
    SPLASH_BLOCK,
    CausalMask,
    dot_product_attention,
    make_causal_mask,
    select_implementation,
)
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


@pytest.mark.parametrize("scale", [1.0, 30.0])  # 30: logits of ~±1000, whose exponentials overflow unshifted
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("q_len,chunk", [(37, 256), (300, 64), (300, 100)])
def test_attention_equals_reference(q_len, chunk, masked, scale):
    rng = np.random.RandomState(0)
    q = scale * rng.randn(2, q_len, 4, 8).astype(np.float32)
    k, v = scale * rng.randn(2, q_len, 2, 8).astype(np.float32), rng.randn(2, q_len, 2, 8).astype(np.float32)
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
    # float32 logits of ~1000 carry rounding errors of ~1e-4 into the exponentials
    assert rel_err(ours[rows], ref[rows]) < (1e-5 if scale == 1 else 1e-3)


# The kernels: each runs where its backend allows and equals the XLA path (splash through
# Pallas' interpret mode on the CPU; cuDNN only on a GPU, so here its arguments are checked
# through jax.nn.dot_product_attention's XLA implementation); and what `auto` picks per backend.

LENGTH = 2 * SPLASH_BLOCK


def _inputs(batch=2, heads=4, kv_heads=2, head_dim=32, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, LENGTH, heads, head_dim)).astype(np.float32)
    k, v = (rng.standard_normal((batch, LENGTH, kv_heads, head_dim)).astype(np.float32) for _ in range(2))
    # row 0: two packed examples then right padding; row 1: one example, left padding
    segments = np.zeros((batch, LENGTH), np.int32)
    segments[0, :100], segments[0, 100:230] = 1, 2
    segments[1, 20:] = 1
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(segments)


def _masks(segments):
    return {"causal": CausalMask(segments, jnp.arange(LENGTH), from_start=True), "none": None}


@pytest.mark.parametrize("masking", ["causal", "none"])
def test_splash_kernel_and_its_gradient_equal_the_xla_path(masking):
    q, k, v, segments = _inputs()
    mask = _masks(segments)[masking]
    real = np.asarray(segments != 0)[:, :, None, None] if mask is not None else np.ones((1, 1, 1, 1), bool)

    def loss(q, k, v, implementation):  # outputs at padding queries are unused and differ
        out = dot_product_attention(q, k, v, mask, implementation=implementation)
        return jnp.sum(jnp.where(real, out, 0.0) ** 2), out

    (xla_loss, xla_out), xla_grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v, "xla")
    (splash_loss, splash_out), splash_grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
        q, k, v, "splash")
    rows = np.broadcast_to(real, xla_out.shape)
    assert rel_err(np.asarray(splash_out)[rows], np.asarray(xla_out)[rows]) < 1e-5
    for ours, ref in zip(splash_grads, xla_grads):
        assert rel_err(ours, ref) < 1e-5


def test_splash_cross_attention_equals_the_xla_path():
    """Queries and keys of different lengths, no mask (the face-to-frame cross-attention)."""
    q, k, v, _ = _inputs()
    q = q[:, :SPLASH_BLOCK]
    expected = dot_product_attention(q, k, v, None, implementation="xla")
    assert rel_err(dot_product_attention(q, k, v, None, implementation="splash"), expected) < 1e-5


def test_splash_is_split_over_the_mesh_as_the_activations():
    """Inside a sharded jit the kernel runs per device (shard_map over batch and heads)."""
    q, k, v, segments = _inputs(batch=4, heads=4, kv_heads=2)
    mask = _masks(segments)["causal"]
    expected = dot_product_attention(q, k, v, mask, implementation="xla")
    mesh = sharding.make_mesh(2, 2, 2)
    with sharding.activate(mesh):
        out = jax.jit(lambda q, k, v, s: dot_product_attention(
            q, k, v, CausalMask(s, jnp.arange(LENGTH), from_start=True), implementation="splash"))(q, k, v, segments)
    real = np.asarray(segments != 0)
    assert rel_err(np.asarray(out)[real], np.asarray(expected)[real]) < 1e-5


# cuDNN's inputs per CausalMask.padding: rows of 8 slots (5, 3 and 0 tokens), as right padding,
# left padding, right padding declared "left" (one run of tokens qualifies), packed segment ids.
_ROWS = {"right": [[1] * 5 + [0] * 3, [1] * 3 + [0] * 5, [0] * 8],
         "left": [[0] * 3 + [1] * 5, [0] * 5 + [1] * 3, [0] * 8],
         "packed": [[1, 1, 2, 2, 2, 0, 0, 0], [1] * 3 + [0] * 5, [0] * 8]}


def _record_cudnn_calls(monkeypatch) -> list[dict]:
    """Replaces jax.nn.dot_product_attention by its XLA implementation (cuDNN needs a GPU),
    recording each call's arguments."""
    calls, real = [], jax.nn.dot_product_attention

    def xla(query, key, value, **kwargs):
        calls.append(dict(query=query, **kwargs))
        return real(query, key, value, **{**kwargs, "implementation": "xla"})

    monkeypatch.setattr(jax.nn, "dot_product_attention", xla)
    return calls


@pytest.mark.parametrize("padding,rows", [("right", "right"), ("left", "left"), ("left", "right"), ("any", "packed"),
                                          (None, "right")])
def test_cudnn_gets_lengths_for_padding_and_means_the_dense_mask(monkeypatch, padding, rows):
    """Padding goes to cuDNN as sequence lengths (at least 1), left padding rolled to the front;
    packed rows as the dense mask. The XLA implementation given the same arguments equals our
    masked path at every real query."""
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((3, 8, 4, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((3, 8, 2, 8)), jnp.float32) for _ in range(2))
    segments = jnp.asarray(_ROWS[rows], jnp.int32)
    mask = None if padding is None else CausalMask(segments, jnp.arange(8), from_start=True, padding=padding)
    calls = _record_cudnn_calls(monkeypatch)
    ours = attention._cudnn(q, k, v, mask)
    (call,) = calls
    assert call["implementation"] == "cudnn" and call.get("is_causal", False) == (mask is not None)
    if padding in ("right", "left"):
        assert "mask" not in call
        np.testing.assert_array_equal(call["query_seq_lengths"], [5, 3, 1])
        np.testing.assert_array_equal(call["key_value_seq_lengths"], [5, 3, 1])
        first = {"left": [3, 5, 0], "right": [0, 0, 0]}[rows]  # each row's first token leads
        np.testing.assert_array_equal(call["query"][:, 0], q[np.arange(3), first])
    else:
        assert "query_seq_lengths" not in call and "key_value_seq_lengths" not in call
        np.testing.assert_array_equal(call.get("mask"), None if mask is None else mask.dense())
    expected = dot_product_attention(q, k, v, mask, implementation="xla")
    real = np.asarray(segments != 0) if mask is not None else np.ones(segments.shape, bool)
    assert rel_err(np.asarray(ours)[real], np.asarray(expected)[real]) < 1e-5


def test_a_gpu_call_site_gives_cudnn_the_lengths(monkeypatch):
    """On a GPU in bf16, `auto` picks cuDNN and a right-padded causal mask reaches it as lengths
    (traced here: the call is jitted for the FLOP count; their values are tested above)."""
    calls = _record_cudnn_calls(monkeypatch)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    q = jnp.ones((2, 8, 4, 8), jnp.bfloat16)
    mask = CausalMask(jnp.asarray(_ROWS["right"][:2], jnp.int32), jnp.arange(8), from_start=True, padding="right")
    dot_product_attention(q, q[:, :, :2], q[:, :, :2], mask, implementation="auto")
    (call,) = calls
    assert "mask" not in call and call["is_causal"] and call["implementation"] == "cudnn"
    assert call["query_seq_lengths"].shape == call["key_value_seq_lengths"].shape == (2,)


def test_the_lm_declares_its_padding(monkeypatch):
    """Qwen2 builds its causal mask with the config's padding (training: right unless text-only
    rows are packed), left for a prefill, right without attention_mask; decoding steps are not
    causal from the start."""
    from omni_jax.configs import omni_emotion, qwen2
    from omni_jax.models.qwen2 import Qwen2ForCausalLM
    from omni_jax.train.step import training_model_config

    seen, real = [], attention.dot_product_attention
    monkeypatch.setattr(attention, "dot_product_attention",
                        lambda q, k, v, mask, *a, **kw: seen.append((mask.from_start, mask.padding)) or real(
                            q, k, v, mask, *a, **kw))
    ids, mask = jnp.zeros((2, 8), jnp.int32), jnp.asarray(_ROWS["right"][:2], jnp.int32)

    def form(padding=None, **inputs):
        cfg = qwen2.get_config("tiny")
        if padding:
            cfg.attention_padding = padding
        jax.eval_shape(lambda: Qwen2ForCausalLM(cfg).init(jax.random.key(0), input_ids=ids, **inputs))
        return seen.pop()  # the layers are scanned: one trace

    assert form("right", attention_mask=mask) == (True, "right")
    assert form(attention_mask=mask) == (True, "any")
    assert form() == (True, "right")
    assert form("right", attention_mask=mask, decode=True, prefill=True) == (True, "left")
    assert form("right", attention_mask=mask, decode=True)[0] is False
    cfg = omni_emotion.get_config("tiny")
    assert training_model_config(cfg).text.attention_padding == "right"
    cfg.data.pack_text_only = True
    assert training_model_config(cfg).text.attention_padding == "any"


def test_an_unknown_padding_is_refused():
    with pytest.raises(ValueError, match="choose one of"):
        CausalMask(jnp.ones((1, 8), jnp.int32), jnp.arange(8), from_start=True, padding="packed")


@pytest.mark.parametrize("requested,backend,dtype,head_dim,length,mask,bias,expected", [
    ("auto", "gpu", jnp.bfloat16, 128, 4096, "causal", False, "cudnn"),
    ("auto", "gpu", jnp.bfloat16, 64, 1500, "none", False, "cudnn"),     # Whisper's encoder
    ("auto", "gpu", jnp.float32, 128, 4096, "causal", False, "xla"),     # cuDNN's flash is half precision
    ("auto", "gpu", jnp.bfloat16, 256, 4096, "causal", False, "xla"),    # head_dim > 128
    ("auto", "gpu", jnp.bfloat16, 32, 49, "none", True, "xla"),          # Swin: relative-position bias
    ("auto", "gpu", jnp.bfloat16, 128, 1, "decode", False, "xla"),       # cached decoding
    ("auto", "tpu", jnp.bfloat16, 128, 4096, "causal", False, "splash"),
    ("auto", "tpu", jnp.bfloat16, 64, 1500, "none", False, "xla"),       # 1500 is not a multiple of 128
    ("auto", "tpu", jnp.bfloat16, 128, 4096, "dense", False, "xla"),     # a mask without structure
    ("auto", "cpu", jnp.float32, 128, 4096, "causal", False, "xla"),
    ("splash", "cpu", jnp.float32, 64, 256, "causal", False, "splash"),  # interpret mode
    ("xla", "tpu", jnp.bfloat16, 128, 4096, "causal", False, "xla"),
])
def test_each_backend_picks_its_kernel(requested, backend, dtype, head_dim, length, mask, bias, expected):
    masks = {"causal": CausalMask(jnp.ones((1, length), jnp.int32), jnp.arange(length), from_start=True),
             "decode": CausalMask(jnp.ones((1, length), jnp.int32), jnp.arange(1), from_start=False),
             "dense": jnp.ones((1, 1, length, length), bool), "none": None}
    chosen = select_implementation(requested, backend, dtype, head_dim, 1 if mask == "decode" else length, length,
                                   masks[mask], jnp.zeros((1, 1, 1, 1)) if bias else None)
    assert chosen == expected


def test_unknown_or_unavailable_kernels_are_refused():
    with pytest.raises(ValueError, match="choose one of"):
        select_implementation("flash", "gpu", jnp.bfloat16, 128, 128, 128, None, None)
    with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
        select_implementation("cudnn", "cpu", jnp.bfloat16, 128, 128, 128, None, None)


@pytest.mark.parametrize("q_len,chunk", [(37, 256), (300, 100)])
def test_a_nan_key_makes_every_row_that_sees_it_nan(q_len, chunk):
    """The row maximum ignores NaN (a faster reduction on the CPU); the exponential still carries
    it into the output, as a plain softmax would."""
    rng = np.random.RandomState(0)
    q = rng.randn(2, q_len, 4, 8).astype(np.float32)
    k, v = rng.randn(2, q_len, 2, 8).astype(np.float32), rng.randn(2, q_len, 2, 8).astype(np.float32)
    k[0, 3, 1] = np.nan
    mask = make_causal_mask(jnp.ones((2, q_len), bool), jnp.arange(q_len))
    out = np.asarray(dot_product_attention(*map(jnp.asarray, (q, k, v)), mask, query_chunk=chunk))
    assert np.isfinite(out[0, :3]).all() and np.isfinite(out[0, :, :2]).all() and np.isfinite(out[1]).all()
    assert np.isnan(out[0, 3:, 2:]).all()  # the queries from slot 3 on, of the heads reading KV head 1
