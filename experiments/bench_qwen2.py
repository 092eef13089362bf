"""Qwen2 prefill and greedy-decode throughput on CPU: omni_jax (JAX) vs transformers (PyTorch).

Both run in one process on the same randomly initialised Qwen2-0.5B-shaped model in float32:
transformers builds it and saves it, our converter converts it, `load_pretrained` loads it
(the files are deleted once loaded).

  prefill  one forward over [1, --seq] tokens, logits for every position in both: torch
           `model(input_ids)` under inference_mode vs `jax.jit` of `model.apply`.
  decode   greedy, a --prompt-tokens prompt then exactly --new-tokens tokens: our compiled
           `generate` vs `model.generate(do_sample=False, min_new_tokens=max_new_tokens)`;
           tokens/s = new tokens / wall time, the prompt's prefill included in both.

Compilation and warm-up runs are excluded; each figure is the median of --repeats runs, JAX
and PyTorch taking turns. It also reports how many generated tokens agree and the prefill
logits' max relative error, plus the load average (other processes skew CPU timings).

Run (full size, about 3 minutes on 2 idle cores):
    .venv/bin/python experiments/bench_qwen2.py [--json]
Quick smoke run:
    .venv/bin/python experiments/bench_qwen2.py --layers 2 --seq 64 --new-tokens 8
XLA's CPU options come from the XLA_FLAGS environment variable (read when jax is imported).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from bench_common import (  # experiments/, the script's folder
    interleaved_medians,
    roofline,
    roofline_line,
    sync,
    torch_device,
)

import omni_jax
from omni_jax.conversion import convert_hf_to_orbax
from omni_jax.generate import generate


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=24, help="decoder layers (24 = Qwen2-0.5B)")
    parser.add_argument("--seq", type=int, default=512, help="prefill length")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="decode prompt length")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per decode run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="parameters and compute on both sides (bfloat16 for GPU runs)")
    parser.add_argument("--scan-layers", action="store_true",
                        help="keep the layers scanned (the training layout) instead of unrolled for inference")
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every figure")
    return parser.parse_args()


# Qwen2-0.5B's shape, and a tiny one for experiments/accelerator_checks.py's CPU rehearsal
SHAPES = {
    "0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_attention_heads=14,
                 num_key_value_heads=2),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2),
}


def qwen2_config(layers: int, shape: str = "0.5b") -> transformers.Qwen2Config:
    """SHAPES[shape] (default Qwen2-0.5B's), `layers` deep."""
    return transformers.Qwen2Config(
        **SHAPES[shape], num_hidden_layers=layers, max_position_embeddings=32768, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=True,
        use_sliding_window=False, dtype="float32",
        # No EOS: both sides must produce exactly --new-tokens tokens with nothing masked.
        bos_token_id=None, eos_token_id=None, pad_token_id=0)


def build_models(config: transformers.Qwen2Config, seed: int, scan_layers: bool,
                 dtype: str) -> tuple[torch.nn.Module, Any, Any]:
    """The torch model (on the GPU when there is one), and the same weights through
    save_pretrained → convert → load_pretrained."""
    torch.manual_seed(seed)
    hf_model = transformers.Qwen2ForCausalLM(config).eval()
    with tempfile.TemporaryDirectory(prefix="bench_qwen2_") as tmp:
        hf_model.save_pretrained(Path(tmp) / "hf")
        convert_hf_to_orbax(Path(tmp) / "hf", Path(tmp) / "orbax", dtype="float32")
        model, params = omni_jax.load_pretrained(Path(tmp) / "orbax", dtype=dtype, scan_layers=scan_layers)
        params = jax.block_until_ready(params)
    return hf_model.to(torch_device(), getattr(torch, dtype)), model, params


def prefill_runs(hf_model: torch.nn.Module, model: Any, params: Any,
                 ids: np.ndarray) -> dict[str, Callable[[], Any]]:
    forward = jax.jit(lambda p, x: model.apply({"params": p}, input_ids=x)["logits"])
    jax_ids, torch_ids = jnp.asarray(ids, jnp.int32), torch.from_numpy(ids).to(torch_device())

    def torch_run() -> torch.Tensor:
        with torch.inference_mode():
            return sync(hf_model(torch_ids).logits)

    return {"jax": lambda: jax.block_until_ready(forward(params, jax_ids)), "torch": torch_run}


def measure_prefill(hf_model: torch.nn.Module, model: Any, params: Any, ids: np.ndarray, repeats: int,
                    dtype: str) -> dict[str, Any]:
    """Prefill of `ids` on both sides, taking turns: tokens/s, the logits' max relative
    difference (to max |torch logit|) and the roofline."""
    logits, seconds = interleaved_medians(prefill_runs(hf_model, model, params, ids), repeats)
    jax_logits, torch_logits = np.asarray(logits["jax"], np.float32), logits["torch"].float().cpu().numpy()
    rel_err = float(np.abs(jax_logits - torch_logits).max() / np.abs(torch_logits).max())
    return {**throughput(seconds, ids.shape[1]), "logits_max_rel_err": rel_err,
            "roofline": roofline(lambda p, x: model.apply({"params": p}, input_ids=x)["logits"],
                                 (params, jnp.asarray(ids, jnp.int32)), seconds["jax"], seconds["torch"], dtype)}


def prefill_check(shape: str, layers: int, seq: int, repeats: int, dtype: str, seed: int = 0) -> dict[str, Any]:
    """The prefill figures alone (experiments/accelerator_checks.py): SHAPES[shape], `layers`
    deep, one row of `seq` random tokens, JAX unrolled (the inference layout)."""
    config = qwen2_config(layers, shape)
    hf_model, model, params = build_models(config, seed, False, dtype)
    ids = np.random.default_rng(seed).integers(0, config.vocab_size, (1, seq), dtype=np.int64)
    return {"shape": shape, "layers": layers, "seq": seq, "dtype": dtype, "jax_device": jax.devices()[0].device_kind,
            "torch_device": torch_device(), "torch_attention": hf_model.config._attn_implementation,
            **measure_prefill(hf_model, model, params, ids, repeats, dtype)}


def decode_runs(hf_model: torch.nn.Module, model: Any, params: Any, prompt: np.ndarray,
                new_tokens: int) -> dict[str, Callable[[], Any]]:
    jax_ids, torch_ids = jnp.asarray(prompt, jnp.int32), torch.from_numpy(prompt).to(torch_device())

    def jax_run() -> jax.Array:
        return jax.block_until_ready(generate(model, params, jax_ids, jnp.ones_like(jax_ids),
                                              max_new_tokens=new_tokens))

    def torch_run() -> torch.Tensor:
        with torch.inference_mode():
            return sync(hf_model.generate(torch_ids, attention_mask=torch.ones_like(torch_ids), do_sample=False,
                                           max_new_tokens=new_tokens, min_new_tokens=new_tokens)[:, prompt.shape[1]:])

    return {"jax": jax_run, "torch": torch_run}


def throughput(seconds: dict[str, float], tokens: int) -> dict[str, float]:
    return {"jax_s": seconds["jax"], "torch_s": seconds["torch"], "jax_tok_s": tokens / seconds["jax"],
            "torch_tok_s": tokens / seconds["torch"], "ratio": seconds["torch"] / seconds["jax"]}


def machine() -> dict[str, Any]:
    # platform.processor() is empty on many Linux builds; /proc/cpuinfo names the CPU.
    name = platform.processor()
    if not name and Path("/proc/cpuinfo").exists():
        name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), "")
    return {"processor": name or platform.machine(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__}


def report(r: dict[str, Any]) -> None:
    c, m = r["config"], r["machine"]
    layout = "scanned" if c["scan_layers"] else "unrolled"
    print(f"\nQwen2 {c['layers']} layers ({layout} in JAX; hidden 896, vocab 151936, tied), {c['dtype']}, batch 1, "
          f"random weights, JAX on {c['jax_device']}, torch on {c['torch_device']} — "
          f"{m['processor']}, {m['cpu_count']} CPUs, jax {m['jax']}, torch {m['torch']}")
    print(f"threads: torch intra-op {r['threads']['torch_intra_op']}, inter-op {r['threads']['torch_inter_op']}; "
          f"XLA default intra-op pool (one per core), XLA_FLAGS={r['threads']['xla_flags']!r}; "
          f"torch attention {r['torch_attention']!r}")
    print(f"load average before/after: {r['loadavg'][0]:.2f} / {r['loadavg'][1]:.2f}; "
          f"medians of {c['repeats']} interleaved runs")
    rows = ((f"prefill {c['seq']} tokens", r["prefill"]),
            (f"decode {c['new_tokens']} after {c['prompt_tokens']}", r["decode"]))
    print(f"{'':28}{'JAX tok/s':>11}{'torch tok/s':>13}{'JAX s':>9}{'torch s':>9}{'JAX/torch':>11}")
    for name, f in rows:
        print(f"{name:28}{f['jax_tok_s']:11.1f}{f['torch_tok_s']:13.1f}{f['jax_s']:9.3f}{f['torch_s']:9.3f}"
              f"{f['ratio']:10.2f}x")
    first = r["decode"]["first_difference"]
    print(f"greedy tokens agreeing: {r['decode']['agree']}/{c['new_tokens']}"
          + (f" (first difference at token {first})" if first is not None else ""))
    print(f"prefill logits max|JAX - torch| / max|torch|: {r['prefill']['logits_max_rel_err']:.2e}")
    print(f"prefill {roofline_line(r['prefill']['roofline'])}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(os.cpu_count())
    load_before = os.getloadavg()[0]
    config = qwen2_config(args.layers)
    hf_model, model, params = build_models(config, args.seed, args.scan_layers, args.dtype)
    rng = np.random.default_rng(args.seed)
    ids = rng.integers(0, config.vocab_size, (1, args.seq), dtype=np.int64)
    prompt = rng.integers(0, config.vocab_size, (1, args.prompt_tokens), dtype=np.int64)

    prefill = measure_prefill(hf_model, model, params, ids, args.repeats, args.dtype)
    tokens, decode_s = interleaved_medians(decode_runs(hf_model, model, params, prompt, args.new_tokens),
                                           args.repeats)
    same = np.asarray(tokens["jax"])[0] == tokens["torch"].cpu().numpy()[0]

    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "threads": {
            "torch_intra_op": torch.get_num_threads(),
            "torch_inter_op": torch.get_num_interop_threads(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
        },
        "torch_attention": hf_model.config._attn_implementation,
        "loadavg": [load_before, os.getloadavg()[0]],
        "config": {
            "layers": args.layers,
            "scan_layers": args.scan_layers,
            "seq": args.seq,
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "dtype": args.dtype,
            "batch": 1,
            "jax_device": jax.devices()[0].device_kind,
            "torch_device": torch_device(),
        },
        "prefill": prefill,
        "decode": {
            **throughput(decode_s, args.new_tokens),
            "agree": int(same.sum()),
            "first_difference": None if same.all() else int(np.argmin(same)),
        },
    }
    report(result)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
