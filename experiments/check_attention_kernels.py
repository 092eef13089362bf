"""The fused attention kernels on the device present against the XLA path: numbers and speed.

For each attention layout the models use (the LM's causal rows in each padding form cuDNN is
given differently: right padding (training), left padding (the prefill), packed segments; GQA;
Whisper-large's 1500-token encoder; SigLIP's 729 tokens with head_dim 72; the face-to-frame
cross-attention), the kernel `attention_impl="auto"` picks here runs against
`"xla"`: outputs and gradients (relative to the largest, asserted within the dtype's tolerance),
and the forward + backward time of each (median of alternated runs). On a GPU the kernel is
cuDNN's flash attention, on a TPU splash; on the CPU `auto` is XLA, so `--kernel splash`
checks splash in interpret mode. experiments/accelerator_checks.py runs the same check.

    python experiments/check_attention_kernels.py [--kernel auto|cudnn|splash] [--dtype bfloat16] [--scale 0.0625]
"""
from __future__ import annotations

import argparse
import json
from typing import Any

import bench_common  # XLA:CPU options before JAX starts; the host header; timers
import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.layers.attention import SPLASH_BLOCK, CausalMask, dot_product_attention, select_implementation

# name: (batch, q_len, kv_len, heads, kv_heads, head_dim, padding): padding None for no mask, else
# the CausalMask's form (what cuDNN is given for it differs: omni_jax/layers/attention.py)
LAYOUTS = {
    "lm causal, right-padded (Qwen2-7B heads)": (2, 4096, 4096, 28, 4, 128, "right"),
    "lm causal, left-padded prefill": (2, 4096, 4096, 28, 4, 128, "left"),
    "lm causal, packed + padded": (2, 4096, 4096, 28, 4, 128, "any"),
    "whisper-large-v3 encoder": (8, 1500, 1500, 20, 20, 64, None),
    "siglip so400m": (8, 729, 729, 16, 16, 72, None),
    "face-to-frame cross-attention": (16, 196, 729, 28, 28, 128, None),
}

# max |kernel - XLA| / max |XLA| allowed for the loss and each gradient: in bf16 4 × its eps
# (2^-7), what a different summation order over thousands of keys leaves after rounding; in
# float32 the tests' bar for splash (tests/layers/test_attention.py)
TOLERANCE = {"bfloat16": 4 * 2.0 ** -7, "float16": 4 * 2.0 ** -10, "float32": 1e-5}


def scaled_layout(layout: tuple, scale: float, max_heads: int | None = None) -> tuple:
    """`layout` with its lengths times `scale` (and at most `max_heads` heads, GQA's ratio kept):
    a length that is a multiple of SPLASH_BLOCK stays one (at least one block), one that is not
    stays off the blocks, so `auto` picks the same kernel as at full size."""
    batch, q_len, kv_len, heads, kv_heads, head_dim, padding = layout

    def length(n: int) -> int:
        if n % SPLASH_BLOCK == 0:
            return max(SPLASH_BLOCK, int(n * scale) // SPLASH_BLOCK * SPLASH_BLOCK)
        short = max(8, int(n * scale))
        return short + 1 if short % SPLASH_BLOCK == 0 else short

    if scale != 1:
        q_len, kv_len = length(q_len), length(kv_len)
    if max_heads and heads > max_heads:
        kv_heads, heads = max(1, kv_heads * max_heads // heads), max_heads
        heads -= heads % kv_heads
    return batch, q_len, kv_len, heads, kv_heads, head_dim, padding


def inputs(batch, q_len, kv_len, heads, kv_heads, head_dim, padding, dtype, seed=0):
    """Random q, k, v; the mask (causal, `padding`'s form: the last row padded by a fifth, on the
    right or the left, and with "any" the first row two packed examples; None: no mask) and which
    queries are real (the others' outputs are unused)."""
    rng = np.random.default_rng(seed)  # on the host: jax.random would compile a program per array
    q, k, v = (jnp.asarray(rng.standard_normal(shape, np.float32), dtype) for shape in (
        (batch, q_len, heads, head_dim), (batch, kv_len, kv_heads, head_dim), (batch, kv_len, kv_heads, head_dim)))
    if padding is None:
        return q, k, v, None, jnp.ones((batch, q_len), bool)
    segments = np.ones((batch, kv_len), np.int32)
    if padding == "left":
        segments[-1, :kv_len // 5] = 0
    else:
        segments[-1, -kv_len // 5:] = 0
    if padding == "any":
        segments[0, kv_len // 3:] = 2  # two packed examples
    mask = CausalMask(jnp.asarray(segments), jnp.arange(q_len), from_start=True, padding=padding)
    return q, k, v, mask, jnp.asarray(segments != 0)


def rel(a, b) -> float:
    """max |a - b| / max |b|, in float32."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.abs(a - b).max() / np.abs(b).max())


def check_layout(name: str, layout: tuple, kernel: str, platform: str, dtype: Any, repeats: int) -> dict:
    """One layout: the kernel `kernel` resolves to for `platform` (what `auto` picks there) against
    XLA, loss and gradients of a weighted sum of squares, and the forward + backward times. A
    layout where it resolves to XLA is timed alone (nothing to compare)."""
    batch, q_len, kv_len, heads, kv_heads, head_dim, padding = layout
    q, k, v, mask, real = inputs(batch, q_len, kv_len, heads, kv_heads, head_dim, padding, dtype)
    chosen = select_implementation(kernel, platform, dtype, head_dim, q_len, kv_len, mask, None)
    weight = real[:, :, None, None].astype(dtype)  # outputs at padding queries are unused

    def loss_and_grads(implementation: str):
        f = lambda q, k, v: jnp.sum((dot_product_attention(q, k, v, mask, implementation=implementation)
                                     * weight).astype(jnp.float32) ** 2)
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

    runs = {impl: loss_and_grads(impl) for impl in dict.fromkeys(["xla", chosen])}
    outputs, medians = bench_common.interleaved_medians(
        {impl: (lambda run=run: jax.block_until_ready(run(q, k, v))) for impl, run in runs.items()}, repeats)
    row = {"layout": name, "shape": [batch, q_len, kv_len, heads, kv_heads, head_dim], "kernel": chosen,
           "xla_ms": medians["xla"] * 1e3}
    if chosen == "xla":
        print(f"{name:45s} {kernel!r} runs XLA here: fwd+bwd {row['xla_ms']:8.2f} ms", flush=True)
        return row
    (xla_loss, xla_grads), (kernel_loss, kernel_grads) = outputs["xla"], outputs[chosen]
    row.update(loss_rel_err=abs(float(kernel_loss) - float(xla_loss)) / abs(float(xla_loss)),
               grad_rel_err=max(rel(a, b) for a, b in zip(kernel_grads, xla_grads)),
               kernel_ms=medians[chosen] * 1e3, speedup=medians["xla"] / medians[chosen])
    row["within_tolerance"] = max(row["loss_rel_err"], row["grad_rel_err"]) <= TOLERANCE[jnp.dtype(dtype).name]
    print(f"{name:45s} {chosen:6s} fwd+bwd {row['kernel_ms']:8.2f} ms vs XLA {row['xla_ms']:8.2f} ms "
          f"({row['speedup']:.2f}x); loss {row['loss_rel_err']:.1e}, gradients {row['grad_rel_err']:.1e}"
          f"{'' if row['within_tolerance'] else ' OUTSIDE TOLERANCE'}", flush=True)
    return row


def check_all(kernel: str = "auto", platform: str | None = None, dtype: str = "bfloat16", repeats: int = 10,
              scale: float = 1.0, max_heads: int | None = None) -> dict:
    """Every layout (lengths times `scale`) through `check_layout`, with the tolerance and the
    layouts outside it (`failures`). `platform`: the backend whose `auto` choice is checked
    (default: the one present; the CPU rehearsal names "tpu", whose splash runs interpreted)."""
    platform = platform or jax.default_backend()
    rows = [check_layout(name, scaled_layout(layout, scale, max_heads), kernel, platform, jnp.dtype(dtype), repeats)
            for name, layout in LAYOUTS.items()]
    return {"device": jax.devices()[0].device_kind, "platform_choices": platform, "dtype": dtype,
            "tolerance": TOLERANCE[dtype], "rows": rows,
            "failures": [row["layout"] for row in rows if not row.get("within_tolerance", True)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", default="auto", choices=["auto", "cudnn", "splash"])
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(TOLERANCE))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every length (e.g. 0.0625 on a CPU)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {**bench_common.run_info(), **check_all(args.kernel, dtype=args.dtype, repeats=args.repeats,
                                                      scale=args.scale)}
    if args.json:
        print(json.dumps(results))
    if results["failures"]:
        raise SystemExit(
            f"outside the {args.dtype} tolerance {results['tolerance']:.1e}: {', '.join(results['failures'])}"
        )


if __name__ == "__main__":
    main()
