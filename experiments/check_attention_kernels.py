"""The fused attention kernels on the device present against the XLA path: numbers and speed.

For each attention layout the models use (the LM's causal rows with padding and packed
segments, GQA; Whisper-large's 1500-token encoder; SigLIP's 729 tokens with head_dim 72; the
face-to-frame cross-attention), the kernel `attention_impl="auto"` picks here runs against
`"xla"`: outputs and gradients (relative to the largest), and the forward + backward time of
each (median of alternated runs). On a GPU the kernel is cuDNN's flash attention, on a TPU
splash; on the CPU `auto` is XLA, so `--kernel splash` checks splash in interpret mode.

    python experiments/check_attention_kernels.py [--kernel auto|cudnn|splash] [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import json

import bench_common  # XLA:CPU options before JAX starts; the host header; timers
import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.layers.attention import CausalMask, dot_product_attention, select_implementation

# name: (batch, q_len, kv_len, heads, kv_heads, head_dim, causal)
LAYOUTS = {
    "lm causal, packed + padded (Qwen2-7B heads)": (2, 4096, 4096, 28, 4, 128, True),
    "whisper-large-v3 encoder": (8, 1500, 1500, 20, 20, 64, False),
    "siglip so400m": (8, 729, 729, 16, 16, 72, False),
    "face-to-frame cross-attention": (16, 196, 729, 28, 28, 128, False),
}


def inputs(batch, q_len, kv_len, heads, kv_heads, head_dim, causal, dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (batch, q_len, heads, head_dim), dtype)
    k = jax.random.normal(keys[1], (batch, kv_len, kv_heads, head_dim), dtype)
    v = jax.random.normal(keys[2], (batch, kv_len, kv_heads, head_dim), dtype)
    if not causal:
        return q, k, v, None, jnp.ones((batch, q_len), bool)
    segments = np.ones((batch, kv_len), np.int32)
    segments[0, kv_len // 3:] = 2  # two packed examples
    segments[-1, -kv_len // 5:] = 0  # right padding
    mask = CausalMask(jnp.asarray(segments), jnp.arange(q_len), from_start=True)
    return q, k, v, mask, jnp.asarray(segments != 0)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.abs(a - b).max() / np.abs(b).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", default="auto", choices=["auto", "cudnn", "splash"])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every length (e.g. 0.125 on a CPU)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype)
    rows = []
    for name, (batch, q_len, kv_len, heads, kv_heads, head_dim, causal) in LAYOUTS.items():
        q_len, kv_len = (max(128, int(n * args.scale) // 128 * 128) if args.scale != 1 else n for n in (q_len, kv_len))
        q, k, v, mask, real = inputs(batch, q_len, kv_len, heads, kv_heads, head_dim, causal, dtype)
        chosen = select_implementation(args.kernel, jax.default_backend(), dtype, head_dim, q_len, kv_len, mask, None)
        weight = real[:, :, None, None].astype(dtype)  # outputs at padding queries are unused

        def loss_and_grads(implementation):
            f = lambda q, k, v: jnp.sum((dot_product_attention(q, k, v, mask, implementation=implementation)
                                         * weight).astype(jnp.float32) ** 2)
            return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

        runs = {"xla": loss_and_grads("xla"), chosen: loss_and_grads(args.kernel)}
        outputs, medians = bench_common.interleaved_medians(
            {impl: (lambda run=run: jax.block_until_ready(run(q, k, v))) for impl, run in runs.items()}, args.repeats)
        (xla_loss, xla_grads), (kernel_loss, kernel_grads) = outputs["xla"], outputs[chosen]
        row = {"layout": name, "shape": [batch, q_len, kv_len, heads, kv_heads, head_dim], "kernel": chosen,
               "loss_rel_err": abs(float(kernel_loss) - float(xla_loss)) / abs(float(xla_loss)),
               "grad_rel_err": max(rel(a, b) for a, b in zip(kernel_grads, xla_grads)),
               "xla_ms": medians["xla"] * 1e3, "kernel_ms": medians[chosen] * 1e3,
               "speedup": medians["xla"] / medians[chosen]}
        rows.append(row)
        print(f"{name:45s} {chosen:6s} fwd+bwd {row['kernel_ms']:8.2f} ms vs XLA {row['xla_ms']:8.2f} ms "
              f"({row['speedup']:.2f}x); loss {row['loss_rel_err']:.1e}, gradients {row['grad_rel_err']:.1e}")
    results = {**bench_common.run_info(), "device": jax.devices()[0].device_kind, "dtype": args.dtype, "rows": rows}
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
