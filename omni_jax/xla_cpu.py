"""XLA:CPU's back-end options, chosen by the CPU's vector extensions and set before JAX starts.

XLA reads XLA_FLAGS once, when JAX creates its CPU client (at the first computation), so
`configure()` runs before that: the CLI, the demo, the benchmarks and tests/conftest.py call it
first thing. What it picks (`selected_flags`) was measured with experiments/bench_cpu_backends.py
(docs/performance.md, "CPU back ends"). A flag the user already put in XLA_FLAGS is left as they set it;
OMNI_JAX_XLA_CPU=off leaves XLA_FLAGS alone altogether. (Importing JAX does not start the
backend; its first computation does.)
"""
from __future__ import annotations

import logging
import os
import platform
import re
import sys
from typing import MutableMapping

log = logging.getLogger(__name__)

# The extensions the choice depends on, as /proc/cpuinfo names them.
FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")

# Each back-end option bench_cpu_backends.py measures, by name.
CANDIDATES: dict[str, list[str]] = {
    "default": [],
    "no_xnnpack": ["--xla_cpu_use_xnnpack=false"],
    "xnn_dot": ["--xla_cpu_use_xnnpack=true", "--xla_cpu_experimental_xnn_fusion_type=dot"],
    "no_ynn": ["--xla_cpu_experimental_ynn_fusion_type="],
    "ynn_dots": ["--xla_cpu_experimental_ynn_fusion_type=individual_dot"],
    "onednn": ["--xla_cpu_use_onednn=true"],
    "vector512": ["--xla_cpu_prefer_vector_width=512"],
}


def cpu_features(cpuinfo: str | None = None) -> set[str]:
    """The FEATURES this CPU has: from the flags line of /proc/cpuinfo (or the text given)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:  # not Linux: no extension is assumed, XLA's own defaults stay
            return set()
    match = re.search(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE)
    return set(match.group(1).split()) & set(FEATURES) if match else set()


def host() -> dict[str, object]:
    """CPU model, core count and FEATURES present: the header of every CPU benchmark row."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"^model name\s*:\s*(.*)$", f.read(), re.MULTILINE)
        model = found.group(1).strip() if found else model
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "features": sorted(cpu_features(), key=FEATURES.index),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def selected_flags(features: set[str]) -> list[str]:
    """The XLA flags chosen for a CPU with these FEATURES.

    jaxlib 0.10.2 sends dots and convolutions to YNNPACK by default (`__ynn_fusion`;
    `--xla_cpu_use_xnnpack` and `--xla_cpu_use_onednn` change nothing in its compiled HLO).
    Measured on AVX-512 (AMD EPYC Zen 4, avx512_bf16; docs/performance.md, "CPU back ends"): YNNPACK for dots
    only, convolutions left to XLA's own emitter, runs SigLIP's 14×14 patch embedding 1.8× faster
    (fp32 and bf16) with every dot as before; disabling YNNPACK altogether loses 10 % on fp32
    dots and 2-3× on bf16 ones. AVX2-only and AMX hosts were not reachable: XLA's defaults stay.
    """
    if "avx512f" in features and "amx_tile" not in features:
        return ["--xla_cpu_experimental_ynn_fusion_type=individual_dot"]
    return []


def _flag_name(flag: str) -> str:
    return flag.split("=", 1)[0].lstrip("-")


def configure(environ: MutableMapping[str, str] = os.environ, features: set[str] | None = None) -> list[str]:
    """Adds the selected flags to environ["XLA_FLAGS"] (those the user has not set); returns the
    flags added. Too late once JAX has started its CPU backend: then it says so and adds none."""
    if environ.get("OMNI_JAX_XLA_CPU", "").lower() in ("off", "0", "false"):
        return []
    current = environ.get("XLA_FLAGS", "").split()
    present = {_flag_name(f) for f in current}
    added = [f for f in selected_flags(cpu_features() if features is None else features)
             if _flag_name(f) not in present]
    if not added:
        return []
    if "jax" in sys.modules and environ is os.environ:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            log.warning("XLA:CPU options %s not applied: JAX's backend had already started", " ".join(added))
            return []
    environ["XLA_FLAGS"] = " ".join([*current, *added])
    return added
