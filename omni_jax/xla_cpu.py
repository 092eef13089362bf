"""XLA:CPU's back-end options, chosen by the CPU's vector extensions and set before JAX starts.

XLA reads XLA_FLAGS once, when JAX creates its CPU client (at the first computation), so
`configure()` runs before that: the CLI, the demo, the benchmarks and tests/conftest.py call it
first thing. What it picks (`selected_flags`) was measured with experiments/bench_cpu_backends.py
(docs/performance.md, "CPU back ends"). A flag the user already put in XLA_FLAGS is left as they set it;
OMNI_JAX_XLA_CPU=off leaves XLA_FLAGS alone altogether. (Importing JAX does not start the
backend; its first computation does.)

Only for the CPU, only what this jaxlib knows: the flags are added when the CPU backend will run
the work (`JAX_PLATFORMS` names cpu first, or no accelerator plugin of JAX — jax-cuda*, jax-rocm*,
libtpu — is installed), and each only if the installed jaxlib's libraries define it (its name is
among their strings): a jaxlib that lacks a flag aborts at start-up on "Unknown flags".
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import mmap
import os
import platform
import re
import sys
from pathlib import Path
from typing import Callable, Iterable, Mapping, MutableMapping

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


ACCELERATOR_PLUGINS = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu")  # distribution name prefixes


def _flag_name(flag: str) -> str:
    return flag.split("=", 1)[0].lstrip("-")


def cpu_runs_the_work(environ: Mapping[str, str], installed: Iterable[str] | None = None) -> bool:
    """Whether JAX will compute on the CPU: JAX_PLATFORMS names cpu first, or (unset) no
    accelerator plugin is installed. `installed`: distribution names (default: this environment's)."""
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    if installed is None:
        installed = (d.metadata["Name"] or "" for d in importlib.metadata.distributions())
    return not any(name.lower().startswith(ACCELERATOR_PLUGINS) for name in installed)


def jaxlib_defines(names: Iterable[str]) -> set[str]:
    """The flag names among `names` that the installed jaxlib's shared libraries hold as strings
    (where XLA registers its flags); none when jaxlib is not found. jaxlib is not imported."""
    spec = importlib.util.find_spec("jaxlib")
    folders = list(spec.submodule_search_locations or []) if spec else []
    wanted, found = {name.encode() for name in names}, set()
    for library in (p for folder in folders for p in Path(folder).rglob("*.so*") if p.stat().st_size > 1 << 20):
        with open(library, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            found |= {name for name in wanted - found if data.find(name) != -1}
    return {name.decode() for name in found}


def backend_started() -> bool:
    """Whether JAX has created its backends (and so read XLA_FLAGS already); imports jax.

    JAX has no public query for it, but through its public config it refuses to change
    `jax_num_cpu_devices` once the backends exist: a change that raises says they do, and one
    that does not is undone at once (nothing reads the value before a backend is created)."""
    import jax

    current = jax.config.jax_num_cpu_devices
    try:
        jax.config.update("jax_num_cpu_devices", current + 1)
    except RuntimeError:
        return True
    jax.config.update("jax_num_cpu_devices", current)
    return False


def simulate_devices(count: int) -> None:
    """`count` CPU devices for a program compiled without its hardware (`omni-jax plan`): JAX
    creates them when its backend starts, on the CPU; once it has started, there must be that
    many already (`InputError` otherwise)."""
    import jax

    from omni_jax.errors import InputError

    if not backend_started():
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", count)
        return
    found = len(jax.devices("cpu"))
    if found < count:
        raise InputError(f"the mesh needs {count} simulated devices, and JAX started with {found} CPU devices "
                         "already; run it in a process of its own (omni-jax plan)")


def configure(environ: MutableMapping[str, str] = os.environ, features: set[str] | None = None,
              defined: Callable[[Iterable[str]], set[str]] = jaxlib_defines, cpu: bool | None = None) -> list[str]:
    """Adds the selected flags to environ["XLA_FLAGS"] (those the user has not set, that this
    jaxlib defines, when the CPU runs the work: module docstring); returns the flags added. Too
    late once JAX has started its CPU backend: then it says so and adds none. `defined` and `cpu`
    stand in for jaxlib and the installed plugins in tests."""
    if environ.get("OMNI_JAX_XLA_CPU", "").lower() in ("off", "0", "false"):
        return []
    if not (cpu_runs_the_work(environ) if cpu is None else cpu):
        return []
    current = environ.get("XLA_FLAGS", "").split()
    present = {_flag_name(f) for f in current}
    added = [f for f in selected_flags(cpu_features() if features is None else features)
             if _flag_name(f) not in present]
    if not added:
        return []
    known = defined([_flag_name(f) for f in added])
    unknown = [f for f in added if _flag_name(f) not in known]
    if unknown:
        log.info("XLA:CPU options %s left out: this jaxlib does not define them", " ".join(unknown))
    added = [f for f in added if _flag_name(f) in known]
    if not added:
        return []
    if "jax" in sys.modules and environ is os.environ and backend_started():
        log.warning("XLA:CPU options %s not applied: JAX's backend had already started", " ".join(added))
        return []
    environ["XLA_FLAGS"] = " ".join([*current, *added])
    return added
