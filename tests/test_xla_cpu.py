"""XLA:CPU options by CPU features (omni_jax/xla_cpu.py): what each feature set gets, parsed
from /proc/cpuinfo text, and the user's own XLA_FLAGS left as they are."""
import os
import subprocess
import sys

from omni_jax import xla_cpu

YNN_DOTS = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
ZEN4 = "model name\t: AMD EPYC 9B14\nflags\t\t: fpu sse2 avx fma avx2 avx512f avx512dq avx512_bf16 avx512vl\n"
SAPPHIRE_RAPIDS = ("model name\t: Intel(R) Xeon(R) Platinum 8481C\n"
                   "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n")
HASWELL = "model name\t: Intel(R) Xeon(R) CPU E5-2680 v3\nflags\t\t: fpu sse4_2 avx fma avx2\n"


def test_features_come_from_the_cpuinfo_flags_line():
    assert xla_cpu.cpu_features(ZEN4) == {"avx2", "avx512f", "avx512_bf16"}
    assert xla_cpu.cpu_features(SAPPHIRE_RAPIDS) == {"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}
    assert xla_cpu.cpu_features(HASWELL) == {"avx2"}
    assert xla_cpu.cpu_features("processor\t: 0\n") == set()


def test_each_feature_set_gets_the_documented_flags():
    assert xla_cpu.selected_flags(xla_cpu.cpu_features(ZEN4)) == [YNN_DOTS]  # measured (README)
    assert xla_cpu.selected_flags(xla_cpu.cpu_features(SAPPHIRE_RAPIDS)) == []  # unmeasured: XLA's defaults
    assert xla_cpu.selected_flags(xla_cpu.cpu_features(HASWELL)) == []
    assert xla_cpu.selected_flags(set()) == []


def test_configure_adds_only_what_the_user_has_not_set():
    avx512 = xla_cpu.cpu_features(ZEN4)
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    assert xla_cpu.configure(environ, avx512) == [YNN_DOTS]
    assert environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {YNN_DOTS}"
    assert xla_cpu.configure(environ, avx512) == []  # a second call changes nothing
    assert environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {YNN_DOTS}"
    mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}  # the user's choice, even empty
    assert xla_cpu.configure(mine, avx512) == [] and mine == {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}
    off = {"OMNI_JAX_XLA_CPU": "off"}
    assert xla_cpu.configure(off, avx512) == [] and "XLA_FLAGS" not in off
    empty = {}
    xla_cpu.configure(empty, avx512, cpu=True)
    assert empty == {"XLA_FLAGS": YNN_DOTS}


def test_flags_only_for_the_cpu_and_only_those_this_jaxlib_defines():
    """A GPU or TPU run gets no CPU option (a jaxlib built for it may not know them); a jaxlib
    that does not define a selected flag (simulated) gets none of it, XLA_FLAGS left as it was."""
    avx512 = xla_cpu.cpu_features(ZEN4)
    for platforms in ("cuda", "tpu", "cuda,cpu"):
        environ = {"JAX_PLATFORMS": platforms}
        assert xla_cpu.configure(environ, avx512) == [] and "XLA_FLAGS" not in environ
    assert not xla_cpu.cpu_runs_the_work({}, installed=["numpy", "jax-cuda12-plugin"])
    assert not xla_cpu.cpu_runs_the_work({}, installed=["libtpu"])
    assert xla_cpu.cpu_runs_the_work({"JAX_PLATFORMS": "cpu"}, installed=["jax-cuda12-plugin"])
    assert xla_cpu.cpu_runs_the_work({}, installed=["numpy", "jax", "jaxlib"])
    older = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert xla_cpu.configure(older, avx512, defined=lambda names: set(), cpu=True) == []
    assert older == {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    # the installed jaxlib, read: it defines the flag the selection uses, and not one made up
    assert xla_cpu.jaxlib_defines(["xla_cpu_experimental_ynn_fusion_type", "xla_cpu_no_such_option"]) == {
        "xla_cpu_experimental_ynn_fusion_type"}


def test_the_cli_applies_the_selection_and_this_xla_accepts_it():
    """A fresh `omni-jax` process sets the flags selected for this CPU (after the user's) before
    JAX starts, and this jaxlib starts its CPU backend with them (XLA aborts on a flag it lacks)."""
    code = ("import os, jax; from omni_jax import cli, xla_cpu\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "jax.numpy.ones(3).block_until_ready()\n"
            "print(os.environ['XLA_FLAGS']); print(' '.join(xla_cpu.selected_flags(xla_cpu.cpu_features())))")
    env = {k: v for k, v in os.environ.items() if k != "OMNI_JAX_XLA_CPU"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    flags, selected = out.splitlines()[-2:]
    assert flags.split() == ["--xla_force_host_platform_device_count=2", *selected.split()]


def test_flags_set_once_jax_has_started_are_refused():
    """Once JAX has created its backends (XLA_FLAGS read), `configure` adds nothing and says
    so; `backend_started` tells, through JAX's public config, leaving the config as it was."""
    code = ("import os, jax; from omni_jax import xla_cpu\n"
            "avx512 = xla_cpu.cpu_features(os.environ['ZEN4'])\n"
            "every = lambda names: set(names)\n"
            "print(xla_cpu.backend_started(), jax.config.jax_num_cpu_devices)\n"
            "print(xla_cpu.configure(os.environ, avx512, defined=every, cpu=True))\n"
            "del os.environ['XLA_FLAGS']\n"
            "jax.numpy.ones(3).block_until_ready()\n"
            "print(xla_cpu.backend_started(), jax.config.jax_num_cpu_devices)\n"
            "print(xla_cpu.configure(os.environ, avx512, defined=every, cpu=True), 'XLA_FLAGS' in os.environ)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMNI_JAX_XLA_CPU", "XLA_FLAGS")}
    env.update(ZEN4=ZEN4, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["False -1", f"[{YNN_DOTS!r}]", "True -1", "[] False"]
    assert "not applied: JAX's backend had already started" in out.stderr
