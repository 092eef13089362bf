"""XLA:CPU's back-end options on the ops that dominate our models, in float32 and bfloat16.

Each candidate (a set of XLA flags, read once when JAX starts its CPU backend) runs in its own
process; the processes take turns, round after round, and each op's figure is the median over
rounds of the per-round medians (background load on a shared machine hits every candidate
alike). Ops, at the shapes the real models use:

  dot        Qwen2-0.5B's MLP up-projection: [512, 896] @ [896, 4864]
  mlp        Qwen2-0.5B's SwiGLU MLP on 512 tokens (three dots, silu, product)
  attention  causal attention through our layer's path, 14 heads × 512 tokens × 64
  patch      SigLIP's 14×14 stride-14 patch embedding, 8 frames of 384² → 1152
  swin       Swin-B's 4×4 patch embedding + a window-attention-sized dot, 8 crops of 224²
  encoder    a Whisper-base-shaped encoder layer (512 wide, 1500 positions)

bfloat16 ops take bfloat16 operands and accumulate in float32 (preferred_element_type).

    .venv/bin/python experiments/bench_cpu_backends.py [--rounds 3] [--repeats 5] [--only default,xnnpack] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from omni_jax.xla_cpu import CANDIDATES, host


def child(repeats: int) -> dict[str, float]:
    """In a candidate's process: each op's median seconds."""
    import time

    import jax
    import jax.numpy as jnp

    from omni_jax.layers.attention import dot_product_attention, make_causal_mask

    key = iter(jax.random.split(jax.random.key(0), 32))
    normal = lambda *shape: jax.random.normal(next(key), shape, jnp.float32) * 0.05
    f32 = jnp.float32

    def dot(x, w):
        return jnp.dot(x, w, preferred_element_type=f32)

    def mlp(x, gate, up, down):
        return dot((jax.nn.silu(dot(x, gate)) * dot(x, up)).astype(x.dtype), down)

    def attention(q, k, v):
        mask = make_causal_mask(jnp.ones((1, q.shape[1]), jnp.int32), jnp.arange(q.shape[1]))
        return dot_product_attention(q, k, v, mask=mask)

    def patch(x, kernel):
        return jax.lax.conv_general_dilated(x, kernel, (kernel.shape[0],) * 2, "VALID",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"), preferred_element_type=f32)

    def swin(x, kernel, w):
        y = patch(x, kernel).reshape(x.shape[0], -1, kernel.shape[-1])
        return dot(y.astype(w.dtype), w)

    def encoder(x, wq, wk, wv, wo, w1, w2):
        def heads(t):
            return t.reshape(*t.shape[:2], 8, 64)
        q, k, v = (heads(dot(x, w).astype(x.dtype)) for w in (wq, wk, wv))
        a = dot_product_attention(q, k, v, None).reshape(x.shape)
        x = x + dot(a.astype(x.dtype), wo).astype(x.dtype)
        return x + dot(jax.nn.gelu(dot(x, w1)).astype(x.dtype), w2).astype(x.dtype)

    ops = {
        "dot": (dot, [normal(512, 896), normal(896, 4864)]),
        "mlp": (mlp, [normal(512, 896), normal(896, 4864), normal(896, 4864), normal(4864, 896)]),
        "attention": (attention, [normal(1, 512, 14, 64), normal(1, 512, 2, 64), normal(1, 512, 2, 64)]),
        "patch": (patch, [normal(8, 384, 384, 3), normal(14, 14, 3, 1152)]),
        "swin": (swin, [normal(8, 224, 224, 3), normal(4, 4, 3, 128), normal(128, 384)]),
        "encoder": (encoder, [normal(1, 1500, 512), *(normal(512, 512) for _ in range(4)), normal(512, 2048),
                              normal(2048, 512)]),
    }
    seconds = {}
    for name, (fn, args) in ops.items():
        for dtype in (jnp.float32, jnp.bfloat16):
            compiled = jax.jit(fn)
            cast = [a.astype(dtype) for a in args]
            jax.block_until_ready(compiled(*cast))
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                jax.block_until_ready(compiled(*cast))
                times.append(time.perf_counter() - start)
            seconds[f"{name} {jnp.dtype(dtype).name}"] = statistics.median(times)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default=",".join(CANDIDATES), help="candidates to run (default: all)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.repeats)))
        return
    names = args.only.split(",")
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    inherited = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" in f)
    for _ in range(args.rounds):
        for name in names:
            env = {**os.environ, "JAX_PLATFORMS": "cpu", "OMNI_JAX_XLA_CPU": "off",
                   "XLA_FLAGS": " ".join([inherited, *CANDIDATES[name]]).strip()}
            done = subprocess.run([sys.executable, __file__, "--child", "--repeats", str(args.repeats)], env=env,
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"candidate {name} failed:\n{done.stderr[-2000:]}")
            rounds[name].append(json.loads(done.stdout.splitlines()[-1]))
    medians = {name: {op: statistics.median(r[op] for r in runs) for op in runs[0]} for name, runs in rounds.items()}
    about = host()
    print(f"host: {about['model']}; {about['cores']} cores; {' '.join(about['features']) or 'no AVX2'}")
    print(f"medians of {args.rounds} rounds (each a median of {args.repeats} calls); ms, and default / candidate\n")
    ops = list(next(iter(medians.values())))
    print(f"| op | {' | '.join(names)} |")
    print(f"|---|{'---|' * len(names)}")
    base = medians.get("default")
    for op in ops:
        cells = []
        for name in names:
            ms = medians[name][op] * 1e3
            ratio = f" ({base[op] / medians[name][op]:.2f}×)" if base and name != "default" else ""
            cells.append(f"{ms:.2f}{ratio}")
        print(f"| {op} | {' | '.join(cells)} |")
    for name in names:
        print(f"{name}: XLA_FLAGS={' '.join(CANDIDATES[name]) or '(none)'}")
    if args.json:
        print(json.dumps({"host": about, "candidates": {n: CANDIDATES[n] for n in names}, "seconds": medians}))


if __name__ == "__main__":
    main()
