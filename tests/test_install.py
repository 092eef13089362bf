"""Installing per platform: what a JAX-only install runs (the CLI and `omni-jax plan` with torch
absent), setup.py's accelerator extras (JAX's own, of the installed release; torch in none but
the ones that need it), and `make setup ACCEL=...` (the stamp follows a change of ACCEL, and
later makes keep the recorded one)."""
import json
import os
import runpy
import shutil
import subprocess
import sys
from importlib.metadata import metadata
from pathlib import Path
from unittest import mock

from packaging.requirements import Requirement

from tests.test_imports import WITHOUT_TORCH

ROOT = Path(__file__).resolve().parents[1]

PLAN_WITHOUT_TORCH = WITHOUT_TORCH + """
from omni_jax import cli
status = cli.main(["--json", "plan", "--config", "omni_emotion:tiny", "--mesh", "fsdp=2", "--batch", "2",
                   "--seq", "128"])
print("torch imported" if "torch" in sys.modules else "no torch")
sys.exit(status)
"""


def test_the_cli_plans_without_torch():
    # what is tested is that it runs: XLA's cheapest backend level compiles it in less time
    env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    out = subprocess.run([sys.executable, "-c", PLAN_WITHOUT_TORCH], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    *_, plan, torch_line = out.stdout.splitlines()
    result = json.loads(plan)
    assert result["ok"] and result["devices"] == 2 and result["model_flops_per_step"] > 0
    assert torch_line == "no torch"


def setup_arguments() -> dict:
    """The keywords setup.py passes to setuptools.setup (read by running it with setup captured)."""
    captured = {}
    with mock.patch("setuptools.setup", lambda **kwargs: captured.update(kwargs)):
        runpy.run_path(str(ROOT / "setup.py"))
    return captured


def test_accelerator_extras_are_jaxs_own_and_torch_stays_optional():
    arguments = setup_arguments()
    extras = {name: [Requirement(r) for r in requirements] for name, requirements in arguments["extras_require"].items()}
    jax_extras = set(metadata("jax").get_all("Provides-Extra"))
    for accelerator in ("cuda12", "cuda13", "tpu"):
        (requirement,) = extras[accelerator]
        assert requirement.name == "jax" and requirement.extras == {accelerator} <= jax_extras
    with_torch = {name for name, requirements in extras.items() if any(r.name == "torch" for r in requirements)}
    assert with_torch == {"convert", "bench", "test"}
    assert not any(Requirement(r).name == "torch" for r in arguments["install_requires"])


def make_setup(folder: Path, *assignments: str) -> list[str]:
    """`make setup` in `folder` with echo for the interpreters: the pip commands it would run."""
    out = subprocess.run(["make", "--no-print-directory", "setup", "PYTHON=echo", "PY=echo", *assignments], cwd=folder,
                         capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if line.startswith("-m pip install --quiet -e")]


def test_make_setup_reinstalls_when_accel_changes(tmp_path):
    for name in ("Makefile", "setup.py"):
        shutil.copy(ROOT / name, tmp_path)
    assert make_setup(tmp_path) == ["-m pip install --quiet -e .[test]"]  # the default: the CPU build
    assert make_setup(tmp_path) == []  # up to date
    assert make_setup(tmp_path, "ACCEL=cuda12") == ["-m pip install --quiet -e .[test,cuda12]"]
    assert make_setup(tmp_path) == []  # the recorded ACCEL is kept: `make test` does not reinstall
    assert make_setup(tmp_path, "ACCEL=tpu") == ["-m pip install --quiet -e .[test,tpu]"]
    assert make_setup(tmp_path, "ACCEL=cpu") == ["-m pip install --quiet -e .[test]"]
    refused = subprocess.run(["make", "setup", "ACCEL=rocm"], cwd=tmp_path, capture_output=True, text=True)
    assert refused.returncode != 0 and "ACCEL=rocm: one of cpu cuda12 cuda13 tpu" in refused.stderr
