"""Multi-head attention with grouped KV heads, boolean masks and a KV cache.

Masks are boolean `[batch, 1, q_length, kv_length]` (True = may attend), built once per
forward by the model and broadcast to every scanned layer.

The KV cache lives in the flax "cache" collection as `[batch, max_length, kv_heads, head_dim]`
buffers; the caller owns the write slot (one per model, shared by the batch). Left-padded
prompts keep one slot for the whole batch; padding is excluded through the key mask, and
positions come from the attention mask, so a padded row decodes exactly as it would alone.

One entry point, `dot_product_attention`, runs every attention of every tower, with the kernel
chosen per call site by `select_implementation` (config `attention_impl`: auto | xla | cudnn |
splash): cuDNN's flash attention on NVIDIA GPUs, the Pallas splash kernel on TPUs (or anywhere in
Pallas' interpret mode, which the CPU tests use), and the chunked XLA path otherwise: with an
additive bias (Swin), for cached decoding, for shapes a kernel does not take, and in float32 on
GPUs (cuDNN's flash kernel is half precision: `auto` never changes numerics beyond bf16's).

What cuDNN is given for a causal mask follows the static `CausalMask.padding` its caller passes
(read from JAX 0.10.2's `jax.nn.dot_product_attention`: padding only as per-row
`query_seq_lengths` / `key_value_seq_lengths`, i.e. a prefix of valid slots; no segment ids or
packed offsets in the public call): "right" → `is_causal` with lengths; "left" → the rows rolled
so their tokens lead, lengths, output rolled back; "any" (packed rows) → `is_causal` with the
dense boolean mask, which cuDNN turns into a [batch, 1, q, kv] bias. Their speed on a GPU is
unmeasured (`experiments/check_attention_kernels.py` measures the kernels).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from omni_jax.errors import InputError
from omni_jax.flops import attention_unit
from omni_jax.layers.linears import DenseGeneral, default_kernel_init
from omni_jax.layers.rotary import apply_rotary
from omni_jax.sharding import split_ways

_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)
PADDINGS = ("right", "left", "any")  # CausalMask.padding


def make_causal_mask(key_segments: jax.Array, q_positions: jax.Array) -> jax.Array:
    """key_segments: [batch, kv_length], 0 at padding, else 1 — or segment ids (1, 2, … per
    example) in packed rows; q_positions: [q_length] slot indices of the queries.

    Returns [batch, 1, q_length, kv_length]: query slot i sees non-padding key slots j ≤ i of its
    own segment. (A query at padding sees every earlier non-padding key: its output is unused.)
    """
    kv_slots = jnp.arange(key_segments.shape[-1])
    causal = kv_slots[None, :] <= q_positions[:, None]
    q_segments = jnp.take(key_segments, q_positions, axis=-1)
    same = (q_segments[:, :, None] == key_segments[:, None, :]) | (q_segments[:, :, None] == 0)
    return (causal[None] & same & (key_segments[:, None, :] != 0))[:, None]


@flax.struct.dataclass
class CausalMask:
    """Causal self-attention in the form fused kernels take; `dense()` is the boolean mask.

    key_segments: [batch, kv] 0 at padding, else 1 or segment ids (packed rows); q_slots: [q]
    the queries' slots. from_start (static): the queries are slots 0 … q-1 of a kv of q slots
    (training, a forward without cache), the only causal layout the kernels are given.
    padding (static, one of PADDINGS; the caller's promise, since the values are traced): "right":
    each row is one example from slot 0, then padding (the pipeline's unpacked training
    batches); "left": each row's tokens are one run of slots (generation's left-padded prompts;
    right-padded or unpadded rows also qualify); "any": anything `make_causal_mask` takes (packed
    segment ids). It only decides what cuDNN is given (`_cudnn`); the other paths read the ids.
    """
    key_segments: jax.Array
    q_slots: jax.Array
    from_start: bool = flax.struct.field(pytree_node=False, default=False)
    padding: str = flax.struct.field(pytree_node=False, default="any")

    def __post_init__(self):
        if self.padding not in PADDINGS:
            raise InputError(f"CausalMask padding {self.padding!r}: choose one of {PADDINGS}")

    def dense(self) -> jax.Array:
        return make_causal_mask(self.key_segments, self.q_slots)


IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")
QUERY_CHUNK = 256
SPLASH_BLOCK = 128  # the splash kernel's tile along q and kv: both lengths must be multiples


def select_implementation(requested: str, backend: str, dtype: Any, head_dim: int, q_len: int, kv_len: int,
                          mask: CausalMask | jax.Array | None, bias: jax.Array | None) -> str:
    """The kernel one call site runs: "xla", "cudnn" or "splash".

    `requested` "auto" means cuDNN on GPUs and splash on TPUs; a kernel named explicitly is used
    on any backend that runs it (splash: all, through Pallas' interpret mode off TPU; cuDNN:
    GPUs only, else ValueError). Either way a call the kernel cannot take runs XLA: an additive
    bias, a dense mask or a causal mask not from the start (cached decoding), cuDNN outside
    bf16/fp16 or head_dim > 128 or not a multiple of 8, splash at lengths not multiples of
    SPLASH_BLOCK.
    """
    if requested not in IMPLEMENTATIONS:
        raise InputError(f"attention_impl {requested!r}: choose one of {IMPLEMENTATIONS}")
    kernel = {"gpu": "cudnn", "tpu": "splash"}.get(backend, "xla") if requested == "auto" else requested
    if kernel == "cudnn" and backend != "gpu":
        raise InputError(f"attention_impl 'cudnn' needs an NVIDIA GPU; JAX's backend here is {backend!r}")
    structured = mask is None or (isinstance(mask, CausalMask) and mask.from_start)
    if kernel == "xla" or bias is not None or not structured:
        return "xla"
    if kernel == "cudnn":
        supported = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim <= 128 and head_dim % 8 == 0
    else:
        supported = q_len % SPLASH_BLOCK == 0 and kv_len % SPLASH_BLOCK == 0
    return kernel if supported else "xla"


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          mask: CausalMask | jax.Array | None, bias: jax.Array | None = None,
                          query_chunk: int = QUERY_CHUNK, implementation: str = "xla") -> jax.Array:
    """query: [batch, q, heads, head_dim]; key/value: [batch, kv, kv_heads, head_dim].

    mask: a CausalMask, or [batch, 1, q, kv] bool. bias: additive logits bias [batch or 1,
    heads, q, kv] (Swin's relative positions and shifted-window mask), added in float32 before
    the mask. `implementation` as `select_implementation` resolves it for this call.

    The XLA path groups heads (GQA) without repeating K/V; softmax runs in float32. Queries
    longer than `query_chunk` are processed in chunks, so the [heads, q, kv] logits never exist
    whole: memory stays linear in q, and on CPU the chunk's logits stay in cache (2.7x faster at
    Whisper's 1500 tokens than one [1500, 1500] softmax). Outputs at padding queries are
    unused and differ between kernels.

    Traced as one unit (`flops.attention_unit`): the FLOP count takes it from these shapes and
    the mask (causal from the start: half), whichever kernel runs.
    """
    causal = isinstance(mask, CausalMask) and mask.from_start
    return attention_unit(lambda q, k, v, m, b: _dispatch(q, k, v, m, b, query_chunk, implementation),
                          query, key, value, mask, bias, causal=causal)


def _dispatch(query, key, value, mask, bias, query_chunk, implementation):
    """`dot_product_attention`'s body: the kernel `select_implementation` picks, run."""
    chosen = select_implementation(implementation, jax.default_backend(), query.dtype, query.shape[-1],
                                   query.shape[1], key.shape[1], mask, bias)
    if chosen == "cudnn":
        return _cudnn(query, key, value, mask)
    if chosen == "splash":
        return _splash(query, key, value, mask, interpret=jax.default_backend() != "tpu")
    if isinstance(mask, CausalMask):
        mask = mask.dense()
    return _xla(query, key, value, mask, bias, query_chunk)


def _xla(query, key, value, mask, bias, query_chunk):
    """The XLA path, head-major: queries [batch, kv_heads, groups, q, head_dim] against keys
    [batch, kv_heads, head_dim, kv] and values [batch, kv_heads, kv, head_dim], laid out once
    (not per query chunk) as the CPU's matmul kernels take them, so each product is a plain
    batched matmul; XLA:CPU otherwise transposes K, V and the weights inside every chunk."""
    batch, q_len, heads, head_dim = query.shape
    kv_heads = key.shape[2]
    groups = heads // kv_heads
    query = query * jnp.asarray(head_dim ** -0.5, query.dtype)
    query = query.reshape(batch, q_len, kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
    key, value = key.transpose(0, 2, 3, 1), value.transpose(0, 2, 1, 3)
    if bias is not None:
        bias = bias.reshape(bias.shape[0], kv_heads, groups, *bias.shape[2:])
    if mask is not None:
        mask = mask[:, :, None]  # [batch, 1, 1, q, kv]
    if q_len <= query_chunk or bias is not None:
        out = _attend(query, key, value, mask, bias)
    else:
        chunks = -(-q_len // query_chunk)
        query_chunk = -(-q_len // chunks)  # even chunks: 1500 → 6 × 250, no padding
        pad = chunks * query_chunk - q_len
        # [chunks, batch, kv_heads, groups, chunk, head_dim]; padded query rows are fully masked
        # (finite) and sliced off below.
        split = lambda x: jnp.moveaxis(
            jnp.pad(x, [(0, 0)] * 3 + [(0, pad), (0, 0)]).reshape(*x.shape[:3], chunks, query_chunk, x.shape[-1]), 3, 0)
        if mask is None:
            out = jax.lax.map(lambda q: _attend(q, key, value, None, None), split(query))
        else:
            out = jax.lax.map(lambda qm: _attend(qm[0], key, value, qm[1], None), (split(query), split(mask)))
        out = jnp.moveaxis(out, 0, 3).reshape(batch, kv_heads, groups, chunks * query_chunk, head_dim)[:, :, :, :q_len]
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, q_len, heads, head_dim)


def _attend(query, key, value, mask, bias):
    """query [batch, kv_heads, groups, q, d] (scaled); key [batch, kv_heads, d, kv]; value
    [batch, kv_heads, kv, d]; mask [batch, 1, 1, q, kv] bool; bias [batch or 1, kv_heads, groups,
    q, kv]. Softmax in float32, normalised after the value product (one pass less over the
    [q, kv] weights)."""
    logits = jnp.einsum("bkgqd,bkds->bkgqs", query, key, preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, _MASKED)
    weights = jnp.exp(logits - _row_max(jax.lax.stop_gradient(logits))[..., None])
    out = jnp.einsum("bkgqs,bksd->bkgqd", weights.astype(value.dtype), value, preferred_element_type=jnp.float32)
    return (out / weights.sum(axis=-1, keepdims=True)).astype(value.dtype)


def _row_max(x: jax.Array) -> jax.Array:
    """max over the last axis, as `where(a > b, a, b)`: XLA:CPU vectorises it 3x better than its
    NaN-propagating max (a NaN logit still makes the softmax NaN, through the exponential)."""
    return jax.lax.reduce(x, jnp.array(-jnp.inf, x.dtype), lambda a, b: jnp.where(a > b, a, b), (x.ndim - 1,))


def _cudnn(query: jax.Array, key: jax.Array, value: jax.Array, mask: CausalMask | None) -> jax.Array:
    """cuDNN's flash attention through `jax.nn.dot_product_attention`; query [batch, q, heads,
    head_dim], key/value [batch, kv, kv_heads, head_dim]; mask None or causal from the start
    (q == kv). Returns [batch, q, heads, head_dim].

    Causal (the kernel skips the blocks above the diagonal), with the padding as sequence
    lengths [batch] where `mask.padding` allows (no [batch, 1, q, kv] mask, which cuDNN takes as
    a bias tensor it reads in full): "right" as is; "left" with each row rolled so that its run
    of tokens starts at slot 0, and the output rolled back (lengths only describe a prefix).
    "any" (packed segment ids: the installed JAX's public call takes no segment offsets) gives
    the dense boolean mask.
    """
    if mask is None:
        return jax.nn.dot_product_attention(query, key, value, implementation="cudnn")
    if mask.padding == "any":
        return jax.nn.dot_product_attention(query, key, value, mask=mask.dense(), is_causal=True,
                                            implementation="cudnn")
    real = mask.key_segments != 0
    # At least 1: a row of padding only then attends its slot 0 (unused output) rather than
    # being a zero-length sequence, which cuDNN < 9.25 answers with NaN (cudnn-frontend #943).
    lengths = jnp.maximum(real.sum(-1), 1).astype(jnp.int32)
    start = jnp.argmax(real, axis=-1) if mask.padding == "left" else None  # the first token's slot

    def roll(x: jax.Array, by: jax.Array) -> jax.Array:  # x[b, (t + by[b]) mod length] at [b, t]
        slots = (jnp.arange(x.shape[1]) + by[:, None]) % x.shape[1]
        return jnp.take_along_axis(x, slots[:, :, None, None], axis=1)

    if start is not None:
        query, key, value = (roll(x, start) for x in (query, key, value))
    out = jax.nn.dot_product_attention(query, key, value, is_causal=True, query_seq_lengths=lengths,
                                       key_value_seq_lengths=lengths, implementation="cudnn")
    return out if start is None else roll(out, -start)


def _splash(query: jax.Array, key: jax.Array, value: jax.Array, mask: CausalMask | None, interpret: bool) -> jax.Array:
    """The splash kernel, one query-head group per KV head (its MQA form), over the batch and the
    KV heads; split over the active mesh as the activations' logical rules split them."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    batch, q_len, heads, head_dim = query.shape
    kv_len, kv_heads = key.shape[1:3]
    groups = heads // kv_heads
    shape = (q_len, kv_len)
    kernel = splash.make_splash_mqa_single_device(
        masks.MultiHeadMask([masks.CausalMask(shape) if mask is not None else masks.FullMask(shape)] * groups),
        block_sizes=splash.BlockSizes(*(SPLASH_BLOCK,) * 8), interpret=interpret)
    # Causal from the start: queries and keys are the same slots, so they share segment ids.
    kv_ids = jnp.ones((batch, kv_len), jnp.int32) if mask is None else mask.key_segments.astype(jnp.int32)
    q_ids = jnp.ones((batch, q_len), jnp.int32) if mask is None else kv_ids

    def attend(query, key, value, q_ids, kv_ids):  # [batch, q|kv, (kv_)heads, d], [batch, q], [batch, kv]
        q = (query * head_dim ** -0.5).reshape(*query.shape[:2], -1, groups, head_dim).transpose(0, 2, 3, 1, 4)
        k, v = key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3)
        per_head = lambda q, k, v, q_ids, kv_ids: kernel(q, k, v, segment_ids=splash.SegmentIds(q=q_ids, kv=kv_ids))
        out = jax.vmap(jax.vmap(per_head, in_axes=(0, 0, 0, None, None)))(q, k, v, q_ids, kv_ids)
        return out.transpose(0, 3, 1, 2, 4).reshape(query.shape)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return attend(query, key, value, q_ids, kv_ids)
    # A Pallas kernel is not partitioned by XLA: each device runs it on its batch rows and heads.
    batch_axes, heads_axes = nn.logical_to_mesh_axes(("activation_batch", "activation_heads"))
    ways = lambda axes: split_ways(jax.sharding.PartitionSpec(axes), mesh)
    batch_axes = batch_axes if batch % ways(batch_axes) == 0 else None
    heads_axes = heads_axes if kv_heads % ways(heads_axes) == 0 else None
    qkv, ids = jax.sharding.PartitionSpec(batch_axes, None, heads_axes, None), jax.sharding.PartitionSpec(batch_axes)
    return jax.shard_map(attend, mesh=mesh, in_specs=(qkv, qkv, qkv, ids, ids), out_specs=qkv,
                         check_vma=False)(query, key, value, q_ids, kv_ids)


class Attention(nn.Module):
    """Self-attention: q/k/v projections to `[embed, heads, head_dim]` kernels, optional rotary,
    grouped KV heads, output projection `[heads, head_dim, embed]`.

    Projection names mirror transformers (`q_proj`, `k_proj`, `v_proj`, and `o_proj` or
    `out_proj`) so checkpoint conversion is a rename.
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    qkv_bias: bool | tuple[bool, bool, bool] = False  # per projection where they differ (Whisper: no k bias)
    out_bias: bool = False
    out_name: str = "o_proj"
    out_init: Any = default_kernel_init  # zeros: a residual branch that starts as nothing
    decode: bool = False
    implementation: str = "auto"  # the config's attention_impl (select_implementation)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None,
                 rotary: tuple[jax.Array, jax.Array] | None = None,
                 cache_slot: jax.Array | None = None, bias: jax.Array | None = None,
                 kv: jax.Array | None = None) -> jax.Array:
        """x: [batch, length, embed]; mask: CausalMask or [batch, 1, length, kv_length] bool;
        rotary: (cos, sin) each [batch, length, head_dim]; cache_slot: scalar int, where this
        step's keys/values are written when decoding; bias: additive [batch or 1, heads, length,
        kv_length] logits bias; kv: [batch, kv_length, kv_embed], the keys' and values' source
        for cross-attention (default: x). Returns [batch, length, embed]."""
        q_bias, k_bias, v_bias = self.qkv_bias if isinstance(self.qkv_bias, tuple) else (self.qkv_bias,) * 3

        def proj(source, heads, bias, name):
            return DenseGeneral((heads, self.head_dim), ("embed", "heads" if heads == self.num_heads else "kv_heads",
                                                         "head_dim"),
                                use_bias=bias, dtype=self.dtype, param_dtype=self.param_dtype, name=name)(source)

        kv = x if kv is None else kv
        query = proj(x, self.num_heads, q_bias, "q_proj")
        key = proj(kv, self.num_kv_heads, k_bias, "k_proj")
        value = proj(kv, self.num_kv_heads, v_bias, "v_proj")
        if rotary is not None:
            query = apply_rotary(query, *rotary)
            key = apply_rotary(key, *rotary)
        query = nn.with_logical_constraint(query, ("activation_batch", "activation_length", "activation_heads", None))
        if self.decode:
            cached = self._update_cache(key, value, cache_slot)
            # A prefill (causal from the start) fills slots 0 … length-1: its queries see only the
            # keys it writes, which the kernels take; later steps attend over the whole cache.
            if not (isinstance(mask, CausalMask) and mask.from_start):
                key, value = cached
        out = dot_product_attention(query, key, value, mask, bias, implementation=self.implementation)
        out = nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_heads", None))
        return DenseGeneral(x.shape[-1], ("heads", "head_dim", "embed"), axis=(-2, -1), use_bias=self.out_bias,
                            kernel_init=self.out_init, dtype=self.dtype, param_dtype=self.param_dtype,
                            name=self.out_name)(out)

    def _update_cache(self, key: jax.Array, value: jax.Array, slot: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Writes this step's keys/values at `slot`; returns the whole cache.

        The cache is created at its full length by initialising with a max-length input."""
        is_initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        if not is_initialized:
            return key, value
        start = (0, slot, 0, 0)
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype), start)
        cached_value.value = jax.lax.dynamic_update_slice(
            cached_value.value, value.astype(cached_value.value.dtype), start)
        return cached_key.value.astype(key.dtype), cached_value.value.astype(value.dtype)
