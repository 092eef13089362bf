"""experiments/accelerator_checks.py: its CPU dry run (the same checks, tiny sizes) writes every
check's figures into one JSON and prints docs/performance.md's rows; off an accelerator without
--dry-run it refuses in one line; a check past its time limit is recorded as timed out, and a
comparison with PyTorch where torch is absent as skipped, with the reason."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax

from tests.test_imports import WITHOUT_TORCH

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "accelerator_checks.py"
TABLES = ("Attention kernels", "The train step", "Whisper encoder", "Qwen2")  # docs/performance.md's sections


def run_checks(*args: str, **env: str) -> subprocess.CompletedProcess:
    # one CPU device, as a user's dry run has (conftest simulates 8 for the other tests); the
    # dry run's own XLA flags, which are conftest's compile-faster ones
    environ = {**os.environ, "XLA_FLAGS": "", **env}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=environ,
                          cwd=ROOT, timeout=600)


def test_the_dry_run_gives_every_checks_figures_and_the_docs_rows(tmp_path):
    out = run_checks("--dry-run", "--out", str(tmp_path / "checks.json"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "checks.json").read_text())
    assert (report["dry_run"], report["backend"], report["devices"], report["dtype"]) == (True, "cpu", 1, "bfloat16")
    assert report["versions"]["jax"] == jax.__version__ and report["date"][:4].isdigit()
    checks = report["checks"]
    assert list(checks) == ["attention", "train", "whisper", "qwen2"]
    for name, check in checks.items():
        assert check["status"] == "ok" and 0 < check["seconds"] < check["limit_s"], (name, check)

    attention = checks["attention"]["result"]
    # a TPU's `auto`: splash for the LM's 128-multiple lengths (interpreted here; each padding
    # form), XLA for the towers' lengths
    assert [row["kernel"] for row in attention["rows"]] == ["splash"] * 3 + ["xla"] * 3
    for row in attention["rows"][:3]:  # bf16 on both paths: different, within the tolerance
        assert 0 < row["grad_rel_err"] <= attention["tolerance"] and row["loss_rel_err"] <= attention["tolerance"]
        assert row["within_tolerance"] and row["kernel_ms"] > 0
    assert attention["failures"] == [] and all(row["xla_ms"] > 0 for row in attention["rows"])

    train = checks["train"]["result"]
    assert (train["config"], train["llm"], train["compute_dtype"]) == ("omni_emotion:tiny", None, "bfloat16")
    assert 0 < train["flops_per_step"] <= train["hardware_flops_per_step"] and train["step_seconds"] > 0
    assert 0 < train["mfu"] < 1 and train["peak_source"] == "measured matmul" and train["tokens_per_s_per_device"] > 0

    for name, speed in (("whisper", "audio_s_per_s"), ("qwen2", "tok_s")):
        result = checks[name]["result"]
        assert result["jax_" + speed] > 0 and result["torch_" + speed] > 0 and result["torch_device"] == "cpu"
    # bf16 on both sides through two layers: about bf16's resolution apart
    assert 0 < checks["whisper"]["result"]["max_rel_err"] < 5e-2
    assert 0 < checks["qwen2"]["result"]["logits_max_rel_err"] < 5e-2

    # the rows, under the name of their docs/performance.md section, dated and with the versions
    sections = set(re.findall(r"^#+ (.+)$", (ROOT / "docs" / "performance.md").read_text(), re.M))
    assert set(TABLES) <= sections
    for title in TABLES:
        assert f"docs/performance.md, {title}:" in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith(f"| {report['date'][:10]}")]
    assert len(rows) == 6 + 1 + 1 + 1 and all(f"jax {jax.__version__}" in row for row in rows)


def test_off_an_accelerator_it_refuses_in_one_line(tmp_path):
    out = run_checks("--out", str(tmp_path / "checks.json"), JAX_PLATFORMS="cpu")
    assert out.returncode == 2 and not (tmp_path / "checks.json").exists()
    assert [line for line in out.stderr.splitlines() if "accelerator_checks" in line] == [
        "accelerator_checks: JAX's backend here is 'cpu' (cpu), not a GPU or TPU: nothing to measure "
        "(--dry-run rehearses the checks on the CPU)"]


def test_a_check_past_its_limit_times_out_and_one_without_torch_is_skipped(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(WITHOUT_TORCH)  # every process of the run: no torch
    out = run_checks("--dry-run", "--only", "whisper,train", "--limit", "train=1", "--out",
                     str(tmp_path / "checks.json"), PYTHONPATH=str(tmp_path))
    assert out.returncode == 1, out.stderr[-3000:]  # a check timed out
    checks = json.loads((tmp_path / "checks.json").read_text())["checks"]
    assert checks["whisper"]["status"] == "skipped" and "torch is not installed" in checks["whisper"]["reason"]
    assert checks["train"]["status"] == "timeout" and checks["train"]["limit_s"] == 1
    assert 1 <= checks["train"]["seconds"] < 10
    assert "not measured: timeout" in out.stdout and "not measured: skipped (torch is not installed" in out.stdout
