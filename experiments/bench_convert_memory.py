"""Peak resident memory (and speed) of the HF → orbax converter on a large synthetic checkpoint.

Writes a Qwen2-shaped transformers checkpoint (default: Qwen2-1.5B's shape with an untied
head, bfloat16, about 3.5 GB in 1 GiB shards plus model.safetensors.index.json) filled with
random values, one tensor at a time, then runs `convert_hf_to_orbax` in a child process and
reports that child's peak RSS (VmHWM) beside the peak RSS of a child that only imports jax
and omni_jax, the checkpoint's largest source tensor and the largest output leaf (a scanned
leaf stacks every layer), and the conversion time and throughput. The streaming converter
should peak near baseline + one output leaf + one source tensor.

Run (about a minute on 2 cores; needs twice the checkpoint size free in --workdir):
    .venv/bin/python experiments/bench_convert_memory.py [--json]
Smaller:  .venv/bin/python experiments/bench_convert_memory.py --layers 4 --hidden 896 --intermediate 4864
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from omni_jax.checkpoint_dir import DTYPES
from omni_jax.conversion import convert_hf_to_orbax
from omni_jax.conversion.engine import plan
from omni_jax.conversion.formats import family_for_hf_config
from omni_jax.conversion.io import CheckpointReader, SafetensorsWriter

GB = 1e9


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--hidden", type=int, default=1536)
    parser.add_argument("--intermediate", type=int, default=8960)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--source-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="converter output dtype (default: keep the source dtype)")
    parser.add_argument("--shard-gb", type=float, default=1.0, help="safetensors shard size (GiB)")
    parser.add_argument("--workdir", default=None, help="where the temporary checkpoints go (default: system temp)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every figure")
    parser.add_argument("--child", nargs="+", metavar="ARG", help=argparse.SUPPRESS)  # internal: measured process
    return parser.parse_args(argv)


def hf_config(args: argparse.Namespace) -> dict[str, Any]:
    return {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": args.vocab,
            "hidden_size": args.hidden, "intermediate_size": args.intermediate, "num_hidden_layers": args.layers,
            "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads, "rms_norm_eps": 1e-6,
            "rope_theta": 1e6, "hidden_act": "silu", "tie_word_embeddings": False, "dtype": args.source_dtype}


def tensor_shapes(cfg: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """transformers' Qwen2ForCausalLM state dict: key and torch shape, in its order."""
    hidden, mlp, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    head_dim = hidden // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * head_dim
    shapes = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes += [(p + "self_attn.q_proj.weight", (hidden, hidden)), (p + "self_attn.q_proj.bias", (hidden,)),
                   (p + "self_attn.k_proj.weight", (kv, hidden)), (p + "self_attn.k_proj.bias", (kv,)),
                   (p + "self_attn.v_proj.weight", (kv, hidden)), (p + "self_attn.v_proj.bias", (kv,)),
                   (p + "self_attn.o_proj.weight", (hidden, hidden)),
                   (p + "mlp.gate_proj.weight", (mlp, hidden)), (p + "mlp.up_proj.weight", (mlp, hidden)),
                   (p + "mlp.down_proj.weight", (hidden, mlp)),
                   (p + "input_layernorm.weight", (hidden,)), (p + "post_attention_layernorm.weight", (hidden,))]
    return shapes + [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]


def write_synthetic(dst: Path, cfg: dict[str, Any], shard_bytes: int) -> None:
    """Random tensors made and written one at a time (the writer plans the shards up front)."""
    rng = np.random.default_rng(0)
    dtype = DTYPES[cfg["dtype"]]
    entries = [(key, shape, dtype) for key, shape in tensor_shapes(cfg)]
    writer = SafetensorsWriter(dst, entries, shard_bytes)
    for key, shape, _ in entries:
        # Random values of a plausible scale: orbax zstd-compresses what it writes, so constant
        # data would make the write (and its buffers) unrealistically cheap.
        writer.write(key, ((rng.random(shape, dtype=np.float32) - 0.5) * 0.1).astype(dtype))
    writer.close()
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))


def sizes(src: Path, dtype: str | None) -> dict[str, Any]:
    """Bytes on disk, the largest source tensor and the largest leaf the converter builds."""
    reader = CheckpointReader(src)
    family, config = family_for_hf_config(json.loads((src / "config.json").read_text()))
    _, leaves = plan(reader, family, config)

    def leaf_bytes(leaf: Any) -> int:
        source_dtypes = [reader.tensors[k].dtype for k in leaf.sources.values()]
        itemsize = DTYPES[dtype].itemsize if dtype else max(d.itemsize for d in source_dtypes)
        return int(np.prod(leaf.shape)) * itemsize

    source_key = max(reader.tensors, key=lambda k: reader.tensors[k].nbytes)
    leaf = max(leaves, key=leaf_bytes)
    return {"checkpoint_bytes": sum(p.stat().st_size for p in src.iterdir()),
            "tensor_bytes": sum(t.nbytes for t in reader.tensors.values()), "files": len(reader.files),
            "tensors": len(reader.tensors), "largest_source": source_key,
            "largest_source_bytes": reader.tensors[source_key].nbytes, "largest_leaf": leaf.path,
            "largest_leaf_shape": list(leaf.shape), "largest_leaf_bytes": leaf_bytes(leaf)}


def cpu_name() -> str:
    # platform.processor() is empty on many Linux builds; /proc/cpuinfo names the CPU.
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
             if line.startswith("model name")]
    return platform.processor() or (names[0] if names else platform.machine())


def peak_rss_bytes() -> int:
    """This process's peak RSS: VmHWM, the high-water mark of its own address space.

    Not ru_maxrss: Linux carries the parent's RSS at fork into the child's ru_maxrss across
    exec, so a child of this (multi-GB, after writing the checkpoint) parent would report it."""
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    # Elsewhere ru_maxrss it is (KiB on Linux, bytes on macOS).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def child(argv: list[str]) -> None:
    """The measured process: "baseline" (imports only) or "convert SRC DST [DTYPE]"; one JSON line out."""
    seconds = 0.0
    if argv[0] == "convert":
        src, dst, dtype = argv[1], argv[2], (argv[3] if len(argv) > 3 else None)
        start = time.perf_counter()
        convert_hf_to_orbax(src, dst, dtype=dtype)
        seconds = time.perf_counter() - start
    print(json.dumps({"peak_rss_bytes": peak_rss_bytes(), "seconds": seconds}))


def run_child(*argv: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"child {argv} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(r: dict[str, Any]) -> None:
    s, c = r["sizes"], r["config"]
    mb = lambda n: f"{n / 2**20:9.1f} MiB"
    print(f"\nQwen2 {c['num_hidden_layers']} layers, hidden {c['hidden_size']}, mlp {c['intermediate_size']}, "
          f"vocab {c['vocab_size']}, untied; source {c['dtype']} → {r['out_dtype']}; "
          f"{r['machine']['processor']}, {r['machine']['cpu_count']} CPUs")
    print(f"jax {r['machine']['jax']}, orbax-checkpoint {r['machine']['orbax-checkpoint']}, tensorstore "
          f"{r['machine']['tensorstore']}; load average before/after {r['loadavg'][0]:.2f} / {r['loadavg'][1]:.2f}")
    print(
        f"checkpoint on disk               {mb(s['checkpoint_bytes'])}  ({s['files']} shards, {s['tensors']} tensors)"
    )
    print(f"largest source tensor            {mb(s['largest_source_bytes'])}  ({s['largest_source']})")
    print(f"largest output leaf              {mb(s['largest_leaf_bytes'])}  ({s['largest_leaf']} "
          f"{s['largest_leaf_shape']})")
    print(f"baseline child peak RSS          {mb(r['baseline_peak_rss_bytes'])}  (imports jax + omni_jax only)")
    print(f"converter child peak RSS         {mb(r['convert_peak_rss_bytes'])}")
    print(f"  above baseline                 {mb(r['convert_peak_rss_bytes'] - r['baseline_peak_rss_bytes'])}"
          f"  (= {r['above_baseline_per_leaf']:.2f} × largest leaf)")
    print(f"conversion time                  {r['seconds']:9.1f} s     ({r['gb_per_s']:.2f} GB/s of tensors)")


def main() -> None:
    args = parse_args()
    if args.child:
        child(args.child)
        return
    cfg = hf_config(args)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_convert_", dir=args.workdir) as tmp:
        src, dst = Path(tmp) / "hf", Path(tmp) / "orbax"
        src.mkdir()
        write_synthetic(src, cfg, int(args.shard_gb * 2**30))
        checkpoint = sizes(src, args.dtype)
        baseline = run_child("baseline")
        converted = run_child("convert", str(src), str(dst), *([args.dtype] if args.dtype else []))
    above = converted["peak_rss_bytes"] - baseline["peak_rss_bytes"]
    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"processor": cpu_name(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform(), "jax": jax.__version__,
                    # The converter's memory is mostly orbax's and tensorstore's doing.
                    **{name: importlib.metadata.version(name) for name in ("orbax-checkpoint", "tensorstore")}},
        "loadavg": [load_before, os.getloadavg()[0]],
        "config": cfg, "out_dtype": args.dtype or cfg["dtype"], "sizes": checkpoint,
        "baseline_peak_rss_bytes": baseline["peak_rss_bytes"], "convert_peak_rss_bytes": converted["peak_rss_bytes"],
        "above_baseline_per_leaf": above / checkpoint["largest_leaf_bytes"],
        "seconds": converted["seconds"], "gb_per_s": checkpoint["tensor_bytes"] / GB / converted["seconds"],
    }
    report(result)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
