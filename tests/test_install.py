"""Installing: a wheel built from the repository, installed into a fresh virtual environment
without torch, runs the CLI (`omni-jax plan` on the shipped configs, `omni-jax synth`, its
stand-in parts without torch's `.pt`) from its own files, not the checkout's; setup.py's
accelerator extras (JAX's own, of the installed release; torch in none but the ones that need
it); `make setup ACCEL=...` (the stamp follows a change of ACCEL, and later makes keep the
recorded one)."""
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

def test_a_wheel_in_a_fresh_environment_runs_from_its_own_files_without_torch(tmp_path):
    """`pip wheel` (no build isolation) of a copy of the sources; `pip install --no-deps` of it
    into a new venv that reaches this environment's packages (a path entry: their .pth files,
    this checkout's editable finder among them, are not run) with torch hidden (a
    sitecustomize.py); run from elsewhere: the package imported is the wheel's, its configs load
    by name, and `omni-jax plan` and `omni-jax synth --out/--parts` run (no torch: the face
    encoder's stand-in is written converted)."""
    import site
    import sysconfig

    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(ROOT / "setup.py", source)
    for name in ("omni_jax", "configs"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("omni_jax-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)
    packages = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                   capture_output=True, text=True, check=True).stdout.strip())
    ours = [p for p in site.getsitepackages() if p.startswith(sys.prefix)] or [sysconfig.get_path("purelib")]
    (packages / "project_dependencies.pth").write_text("\n".join(ours) + "\n")
    (packages / "sitecustomize.py").write_text(WITHOUT_TORCH)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0",  # what is tested is that it runs
           "PYTHONPATH": ""}
    where = subprocess.run([str(python), "-c", "import omni_jax, omni_jax.configs.omni_emotion as c, sys; "
                            "print(omni_jax.__file__); print(c.__file__); print('torch' in sys.modules)"],
                           capture_output=True, text=True, cwd=elsewhere, env=env, check=True).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where[:2]) and where[2] == "False", where
    omni_jax = venv / "bin" / "omni-jax"
    plan = subprocess.run([str(omni_jax), "--json", "plan", "--config", "omni_emotion:tiny", "--config.mesh.fsdp=2",
                           "--config.train.global_batch_size=2"], capture_output=True, text=True, cwd=elsewhere,
                          env=env, timeout=300)
    assert plan.returncode == 0, plan.stderr[-3000:]
    result = json.loads(plan.stdout.splitlines()[-1])
    assert result["ok"] and result["devices"] == 2 and result["model_flops_per_step"] > 0
    synth = subprocess.run([str(omni_jax), "--json", "synth", "--out", "clips", "--parts", "parts",
                            "--config.synth.clips=7", "--config.synth.eval_clips=0"],
                           capture_output=True, text=True, cwd=elsewhere, env=env, timeout=300)
    assert synth.returncode == 0, synth.stderr[-3000:]
    written = json.loads(synth.stdout.splitlines()[-1])
    assert "facexformer" not in written and Path(written["facexformer_converted"]).is_relative_to(elsewhere)
    assert (elsewhere / "parts" / "llava-onevision-qwen2-7b-ov-hf" / "model.safetensors").exists()
    assert (elsewhere / "clips" / "audio_captions.jsonl").exists()


def setup_arguments() -> dict:
    """The keywords setup.py passes to setuptools.setup (read by running it with setup captured)."""
    captured = {}
    with mock.patch("setuptools.setup", lambda **kwargs: captured.update(kwargs)):
        runpy.run_path(str(ROOT / "setup.py"))
    return captured


def test_accelerator_extras_are_jaxs_own_and_torch_stays_optional():
    arguments = setup_arguments()
    extras = {
        name: [Requirement(r) for r in requirements] for name, requirements in arguments["extras_require"].items()
    }
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
