"""Every accelerator figure and check the docs mark unmeasured, in one run on one GPU or TPU host.

    python experiments/accelerator_checks.py [--out accelerator_checks.json] [--only attention,train]
                                             [--limit train=300]
    python experiments/accelerator_checks.py --dry-run    # the same code on the CPU, tiny sizes

The checks, each in its own process under a time limit (a slow compile or a hang costs that
check alone; it is recorded as timed out), one after another (one process holds a TPU at a time):

  attention  every attention kernel `attention_impl="auto"` picks here (cuDNN on GPUs, splash on
             TPUs) against XLA on each layout the models use, loss and gradients asserted within
             the dtype's tolerance, forward + backward times (experiments/check_attention_kernels.py);
  train      the phase-3 train step's MFU on the LLM-dominated config: the 7B's towers with a
             Qwen2-1.5B-shaped LM, sequence 4096, bf16 compute (experiments/bench_train.py);
  whisper    the Whisper-large-v3 encoder in bf16 against transformers' on the same device
             (experiments/bench_audio.py);
  qwen2      Qwen2-0.5B's 512-token prefill in bf16 against transformers' (experiments/bench_qwen2.py).

The PyTorch comparisons need torch with CUDA (the `bench` or `test` extra on a GPU host); where it
is absent, or on a TPU, they are skipped with the reason recorded. The run writes one JSON
(versions, device, date, each check's status and figures) and prints the rows of
docs/performance.md's tables. Exit status: 0 when every check passed or was skipped, 1 when one
failed, crashed or timed out, 2 (one line, nothing run) when JAX's backend is not a GPU or TPU.

--dry-run rehearses it on the CPU (JAX_PLATFORMS=cpu, torch kept off any GPU, XLA's backend at
its cheapest optimisation level: its figures show that each check works, not a speed) through
the same functions with tiny sizes (SIZES); the attention check then takes the kernels a TPU's
`auto` picks (splash, in Pallas' interpret mode), as no CPU runs cuDNN. tests/test_accelerator_checks.py
runs it.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]


class Skipped(Exception):
    """A check that cannot run here; its message is the reason recorded."""


# Each check's sizes on an accelerator ("full") and in the CPU rehearsal ("dry"): nothing else differs.
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "attention": {"full": dict(repeats=10, scale=1.0, max_heads=None),
                  "dry": dict(repeats=1, scale=1 / 32, max_heads=4)},
    # batch per device: 8 fills one 80 GiB GPU with this model (bench_train.py's default)
    "train": {"full": dict(config="omni_emotion:7b", llm="1.5b", batch_per_device=8, seq=4096, steps=5),
              "dry": dict(config="omni_emotion:tiny", llm=None, batch_per_device=1, seq=128, steps=1)},
    "whisper": {"full": dict(shape="large-v3", batch=8, repeats=3), "dry": dict(shape="tiny", batch=1, repeats=1)},
    "qwen2": {"full": dict(shape="0.5b", layers=24, seq=512, repeats=5),
              "dry": dict(shape="tiny", layers=2, seq=64, repeats=1)},
}
DTYPE = "bfloat16"  # every check's compute dtype


def torch_reason(backend: str) -> str | None:
    """Why the PyTorch reference cannot run on JAX's device here; None when it can."""
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (the `bench` extra: pip install -e '.[bench]')"
    if backend == "tpu":
        return "PyTorch has no TPU device here: the comparisons with transformers run on GPUs"
    if backend == "gpu":
        import torch

        if not torch.cuda.is_available():
            return f"torch {torch.__version__} sees no CUDA device (a CPU build, or one this driver does not run)"
    return None


def check_attention(sizes: dict[str, Any], dry_run: bool) -> dict:
    """check_attention_kernels.check_all; the rehearsal takes a TPU's choices (no CPU runs cuDNN)."""
    import check_attention_kernels

    return check_attention_kernels.check_all(platform="tpu" if dry_run else None, dtype=DTYPE, **sizes)


def check_train(sizes: dict[str, Any], dry_run: bool) -> dict:
    """bench_train.measure_step with the sizes' config, never another: a config that does not fit
    fails here rather than falling back."""
    import bench_train
    import jax

    batch = sizes["batch_per_device"] * jax.device_count()
    return bench_train.measure_step(sizes["config"], sizes["llm"], batch, sizes["seq"], compute_dtype=DTYPE,
                                    steps=sizes["steps"])


def torch_reference(run: Callable[[dict[str, Any]], dict]) -> Callable[[dict[str, Any], bool], dict]:
    """A check against PyTorch: skipped, with the reason, where torch cannot run on JAX's device."""
    def check(sizes: dict[str, Any], dry_run: bool) -> dict:
        import jax

        reason = torch_reason(jax.default_backend())
        if reason:
            raise Skipped(reason)
        return run(sizes)

    check.__doc__ = run.__doc__
    return check


@torch_reference
def check_whisper(sizes: dict[str, Any]) -> dict:
    """bench_audio.bench_encoder: audio-seconds/s of both sides, their ratio and difference."""
    import bench_audio

    return bench_audio.bench_encoder(sizes["shape"], sizes["batch"], sizes["repeats"], DTYPE)


@torch_reference
def check_qwen2(sizes: dict[str, Any]) -> dict:
    """bench_qwen2.prefill_check: prefill tokens/s of both sides, their ratio and difference."""
    import bench_qwen2

    return bench_qwen2.prefill_check(sizes["shape"], sizes["layers"], sizes["seq"], sizes["repeats"], DTYPE)


def probe(sizes: dict[str, Any], dry_run: bool) -> dict:
    """JAX's backend and devices, read in a process of its own (a TPU is held by one process at a time)."""
    import jax

    return {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
            "devices": jax.device_count()}


@dataclasses.dataclass(frozen=True)
class Check:
    """A check: what runs in its process, and its time limit on an accelerator (seconds)."""
    run: Callable[[dict[str, Any], bool], dict]
    limit_s: float


# The limits add up to under 8 minutes with the probe; each holds its check's start-up (imports,
# CUDA/TPU initialisation), model building and compiles with room to spare.
CHECKS = {"attention": Check(check_attention, 90), "train": Check(check_train, 170),
          "whisper": Check(check_whisper, 90), "qwen2": Check(check_qwen2, 75)}
PROBE = Check(probe, 45)
DRY_RUN_LIMIT_S = 180  # per check on a CPU, which compiles slowly and may be shared
DRY_RUN_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")


def run_child(name: str, dry_run: bool, result_file: Path) -> None:
    """In the check's own process: run it and write {"status", "result" | "reason" | "error"}."""
    check = PROBE if name == "probe" else CHECKS[name]
    try:
        result = check.run(SIZES.get(name, {}).get("dry" if dry_run else "full", {}), dry_run)
        outcome = {"status": "failed" if result.get("failures") else "ok", "result": result}
    except Skipped as skipped:
        outcome = {"status": "skipped", "reason": str(skipped)}
    except Exception as e:  # recorded (the traceback is on stderr too); the other checks go on
        traceback.print_exc()
        outcome = {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000]}
    result_file.write_text(json.dumps(outcome, default=float))


def run_check(name: str, limit_s: float, dry_run: bool, folder: Path) -> dict:
    """`name` in a fresh process (output to this one's), killed after `limit_s`: its outcome with
    the seconds it took and its limit."""
    result_file = folder / f"{name}.json"
    env = dict(os.environ)
    if dry_run:  # JAX on the CPU, and torch too (the comparison is on one device)
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
        # the rehearsal shows that each check runs and gives numbers, not their speed: LLVM's
        # cheapest level and XLA:CPU's older elementwise emitters compile the tiny programs in
        # about a quarter of the time
        env["XLA_FLAGS"] = " ".join((env.get("XLA_FLAGS", ""), *DRY_RUN_XLA_FLAGS)).strip()
    command = [sys.executable, __file__, "--child", name, "--result", str(result_file)] + ["--dry-run"] * dry_run
    start = time.monotonic()
    try:
        process = subprocess.run(command, env=env, cwd=ROOT, timeout=limit_s)
    except subprocess.TimeoutExpired:
        outcome = {"status": "timeout", "error": f"still running after its limit of {limit_s:.0f} s; killed"}
    else:
        outcome = (json.loads(result_file.read_text()) if result_file.exists() else
                   {"status": "error", "error": f"the process ended with status {process.returncode} and no result"})
    return {**outcome, "seconds": round(time.monotonic() - start, 1), "limit_s": limit_s}


def versions() -> dict[str, str | None]:
    """The installed JAX, its accelerator plugins, and torch (read without importing them)."""
    names = ["jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "libtpu", "torch", "transformers"]
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _machine(report: dict) -> str:
    v = report["versions"]
    plugin = next(
        (f", {name} {v[name]}" for name in ("jax-cuda12-plugin", "jax-cuda13-plugin", "libtpu") if v[name]), ""
    )
    return (f"{report['devices']}× {report['device_kind']} (jax {v['jax']}, jaxlib {v['jaxlib']}{plugin}, "
            f"torch {v['torch'] or 'absent'}){' — CPU dry run' if report['dry_run'] else ''}")


def _not_measured(outcome: dict) -> str:
    return f"not measured: {outcome['status']} ({outcome.get('reason') or outcome.get('error', '')})"


def table_rows(report: dict) -> list[str]:
    """docs/performance.md's rows for the figures in `report`, each table under its section."""
    date, machine = report["date"][:10], _machine(report)
    lines = []
    attention, train, whisper, qwen2 = (report["checks"].get(name) for name in ("attention", "train", "whisper",
                                                                                "qwen2"))
    if attention:
        lines += [
            "",
            "docs/performance.md, Attention kernels:",
            "| date | machine | layout (batch, q, kv, heads, kv heads, head_dim) | kernel | fwd+bwd kernel / XLA | "
            "speedup | loss / gradient rel. diff |",
            "|---|---|---|---|---|---|---|",
        ]
        if attention["status"] in ("ok", "failed"):
            for row in attention["result"]["rows"]:
                shape = f"{row['layout']} ({', '.join(map(str, row['shape']))})"
                if row["kernel"] == "xla":
                    lines.append(f"| {date} | {machine} | {shape} | XLA (`auto`'s choice) | — / {row['xla_ms']:.2f} ms "
                                 "| — | — |")
                else:
                    verdict = "" if row["within_tolerance"] else " **outside tolerance**"
                    lines.append(f"| {date} | {machine} | {shape} | {row['kernel']} | {row['kernel_ms']:.2f} / "
                                 f"{row['xla_ms']:.2f} ms | {row['speedup']:.2f}× | {row['loss_rel_err']:.1e} / "
                                 f"{row['grad_rel_err']:.1e}{verdict} |")
        else:
            lines.append(f"| {date} | {machine} | {_not_measured(attention)} | | | | |")
    if train:
        lines += [
            "",
            "docs/performance.md, The train step:",
            "| date, machine | config | step | tokens/s/device | MFU |",
            "|---|---|---|---|---|",
        ]
        if train["status"] == "ok":
            r = train["result"]
            mfu = (f"{r['mfu']:.1%} of the {r['peak_source']} {r['peak_flops_per_device'] / 1e12:.0f} TFLOP/s "
                   f"(HFU {r['hfu']:.1%})" if r["mfu"] is not None else f"— (peak: {r['peak_source']})")
            lines.append(
                f"| {date}, {machine} | {r['config']}{' + Qwen2-' + r['llm'] + '-shaped LM' if r['llm'] else ''}, "
                f"phase 3, batch {r['batch']} × {r['seq']}, {r['compute_dtype']}, remat {r['remat']} | "
                f"{r['step_seconds'] * 1e3:.0f} ms | {r['tokens_per_s_per_device']:,.0f} | {mfu} |"
            )
        else:
            lines.append(f"| {date}, {machine} | {_not_measured(train)} | | | |")
    if whisper:
        lines += [
            "",
            "docs/performance.md, Whisper encoder:",
            "| date | machine | dtype | shape, batch | JAX audio-s/s | PyTorch audio-s/s | ratio | max rel. diff |",
            "|---|---|---|---|---|---|---|---|",
        ]
        if whisper["status"] == "ok":
            r = whisper["result"]
            lines.append(
                f"| {date} | {machine} | {r['dtype']} | {r['shape']}, {r['batch']} | {r['jax_audio_s_per_s']:,.0f} "
                f"| {r['torch_audio_s_per_s']:,.0f} | {r['ratio']:.2f}× | {r['max_rel_err']:.1e} |"
            )
        else:
            lines.append(f"| {date} | {machine} | {DTYPE} | {_not_measured(whisper)} | | | | |")
    if qwen2:
        lines += [
            "",
            "docs/performance.md, Qwen2:",
            "| date | machine | dtype | prefill JAX / PyTorch tok/s | ratio | decode JAX / PyTorch tok/s | ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        if qwen2["status"] == "ok":
            r = qwen2["result"]
            lines.append(f"| {date} | {machine} | {r['dtype']} | {r['jax_tok_s']:,.0f} / {r['torch_tok_s']:,.0f} "
                         f"({r['seq']} tokens) | {r['ratio']:.2f}× | — (prefill only) | — |")
        else:
            lines.append(f"| {date} | {machine} | {DTYPE} | {_not_measured(qwen2)} | | | |")
    return lines


def parse_limits(pairs: list[str]) -> dict[str, float]:
    """--limit NAME=SECONDS, repeated."""
    limits = {}
    for pair in pairs:
        name, _, seconds = pair.partition("=")
        if name not in CHECKS or not seconds:
            raise SystemExit(f"--limit {pair}: NAME=SECONDS, NAME one of {', '.join(CHECKS)}")
        limits[name] = float(seconds)
    return limits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the same checks on the CPU with tiny sizes")
    parser.add_argument("--out", type=Path, default=Path("accelerator_checks.json"), help="the JSON written")
    parser.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated, of {', '.join(CHECKS)}")
    parser.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="NAME=SECONDS",
        help="a check's time limit (defaults: "
        + ", ".join(f"{n} {c.limit_s:.0f} s" for n, c in CHECKS.items())
        + f"; dry run {DRY_RUN_LIMIT_S} s)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a check's own process
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args.child, args.dry_run, args.result)
        return 0
    names = [n for n in args.only.split(",") if n]
    if unknown := sorted(set(names) - set(CHECKS)):
        parser.error(f"--only: no check {', '.join(unknown)} (there are {', '.join(CHECKS)})")
    limits = {name: DRY_RUN_LIMIT_S if args.dry_run else CHECKS[name].limit_s for name in names}
    limits.update(parse_limits(args.limit))
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="accelerator_checks_") as folder:
        found = run_check("probe", DRY_RUN_LIMIT_S if args.dry_run else PROBE.limit_s, args.dry_run, Path(folder))
        if found["status"] != "ok":
            print(f"accelerator_checks: could not start JAX: {found.get('error')}", file=sys.stderr)
            return 1
        device = found["result"]
        if device["backend"] not in ("gpu", "tpu") and not args.dry_run:
            print(f"accelerator_checks: JAX's backend here is {device['backend']!r} ({device['device_kind']}), not a "
                  "GPU or TPU: nothing to measure (--dry-run rehearses the checks on the CPU)", file=sys.stderr)
            return 2
        report = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "dry_run": args.dry_run,
                  **device, "versions": versions(), "sizes": {n: SIZES[n]["dry" if args.dry_run else "full"]
                                                               for n in names}, "dtype": DTYPE, "checks": {}}
        for name in names:
            print(f"=== {name} (limit {limits[name]:.0f} s)", flush=True)
            report["checks"][name] = outcome = run_check(name, limits[name], args.dry_run, Path(folder))
            print(f"=== {name}: {outcome['status']} in {outcome['seconds']:.0f} s"
                  + (f": {outcome.get('reason') or outcome.get('error')}" if outcome["status"] != "ok" else ""),
                  flush=True)
    report["total_seconds"] = round(time.monotonic() - start, 1)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print("\n".join(table_rows(report)))
    print(f"\nwrote {args.out} ({report['total_seconds']:.0f} s)")
    return 0 if all(c["status"] in ("ok", "skipped") for c in report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
