"""What the benchmarks here share: XLA:CPU's options chosen for this CPU (set on import, before
JAX starts its backend) and a header naming the host; timers (a median; medians of runs taking
turns), the torch device, the matrix-product peak and how close each side comes to it, and the
description of the run. torch is imported only by what uses it: the benchmarks without a
PyTorch side (bench_train.py, the attention check) run where it is not installed."""
from __future__ import annotations

import datetime
import functools
import importlib.metadata
import json
import os
import statistics
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp

from omni_jax import xla_cpu
from omni_jax.flops import count_flops

xla_cpu.configure()
HOST = xla_cpu.host()
print(f"host: {HOST['model']}, {HOST['cores']} cores, {' '.join(HOST['features']) or 'no AVX2'}; "
      f"XLA_FLAGS={HOST['xla_flags']!r}", flush=True)

if TYPE_CHECKING:
    import torch


@functools.cache
def torch_device() -> str:
    """Where the PyTorch side runs: "cuda" when torch sees a GPU, else "cpu" (imports torch)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sync(x: torch.Tensor) -> torch.Tensor:
    """`x` once the GPU (if torch uses one) has finished: for timing."""
    if torch_device() == "cuda":
        import torch

        torch.cuda.synchronize()
    return x


def interleaved_times(runs: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, Any], dict[str, list]]:
    """Each run's output (from an untimed warm-up: compilation, allocator) and its `repeats`
    wall times. The runs take turns, so background load on a shared machine hits all alike."""
    outputs = {name: run() for name, run in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return outputs, times


def interleaved_medians(runs: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, Any], dict[str, float]]:
    """`interleaved_times`' outputs and each run's median wall time."""
    outputs, times = interleaved_times(runs, repeats)
    return outputs, {name: statistics.median(t) for name, t in times.items()}


def ratio_spread(slower: list[float], faster: list[float]) -> tuple[float, float]:
    """(min, max) of the ratios of runs that took turns: how far one median ratio can be trusted."""
    ratios = [s / f for s, f in zip(slower, faster)]
    return min(ratios), max(ratios)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall-clock seconds of `repeats` calls of `fn` (which must block until done)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measured_peak(dtype: str, size: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of a [size, size] @ [size, size] product in `dtype` on one device (f32 accumulation);
    size 2048 on the CPU, 8192 on an accelerator."""
    size = size or (2048 if jax.default_backend() == "cpu" else 8192)
    a = jnp.ones((size, size), dtype)
    product = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    product(a, a).block_until_ready()
    return 2 * size ** 3 / median_seconds(lambda: product(a, a).block_until_ready(), repeats)


def roofline(fn: Callable[..., Any], args: tuple, jax_s: float, torch_s: float, dtype: str) -> dict[str, float]:
    """How close each side's call of the same model comes to the device's matrix-product peak: the
    call's matrix-product FLOPs (counted on `fn`'s jaxpr as `plan` counts them, leaving out what
    `fn` computes and drops), each side's FLOP/s on that count (PyTorch's understated where it
    computes more, e.g. the face encoder's full-size fused map), the measured peak in `dtype`,
    and the highest JAX ÷ PyTorch ratio the peak allows (PyTorch's time ÷ the time JAX's
    products alone take at the peak)."""
    from jax.interpreters import partial_eval as pe  # the public module of JAX's dead-code elimination

    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    # without the outputs `fn` computes and drops (XLA removes them too)
    flops = count_flops(pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))[0]).model  # a forward: model = hardware
    peak = measured_peak(dtype)
    return {"matmul_flops": flops, "jax_flop_s": flops / jax_s, "torch_flop_s": flops / torch_s,
            "peak_flop_s": peak, "ratio_ceiling": torch_s * peak / flops}


def roofline_line(r: dict[str, float]) -> str:
    """One line for `roofline`'s figures."""
    peak = r["peak_flop_s"]
    return (f"matrix products {r['matmul_flops'] / 1e9:.1f} GFLOP per call: JAX {r['jax_flop_s'] / 1e9:.0f} GFLOP/s "
            f"({r['jax_flop_s'] / peak:.0%} of the measured peak {peak / 1e9:.0f}), PyTorch "
            f"{r['torch_flop_s'] / 1e9:.0f} ({r['torch_flop_s'] / peak:.0%}); at the peak the ratio could reach "
            f"{r['ratio_ceiling']:.2f}x")


def installed_version(distribution: str) -> str | None:
    """The installed version of `distribution` (None when absent), read without importing it."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_info() -> dict[str, Any]:
    """Date, machine and framework versions, the header of every benchmark's JSON."""
    return {"date": datetime.date.today().isoformat(), "machine": f"{HOST['model']}, {os.cpu_count()} cores",
            "host": HOST, "jax": jax.__version__, "jaxlib": installed_version("jaxlib"),
            "torch": installed_version("torch")}


def finish(results: dict, as_json: bool) -> None:
    """The closing lines every benchmark prints: where it ran, then (with --json) one JSON object."""
    # torch's thread count only where a PyTorch side ran (importing torch for it would cost seconds)
    threads = f"torch threads {sys.modules['torch'].get_num_threads()}; " if "torch" in sys.modules else ""
    print(f"{threads}{results['machine']}; {results['date']}")
    if as_json:
        print(json.dumps(results))
