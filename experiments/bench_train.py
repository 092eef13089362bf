"""Train-step throughput and MFU: the phase-3 (instruction-tuning) step of Omni-Emotion, as
`omni-jax train` builds it, on the devices present.

On an accelerator the default is the step the issue asks for: the 7B's towers (SigLIP so400m,
Whisper-large-v3 encoder, Swin-B) with a Qwen2-1.5B-shaped language model (`--llm 1.5b`),
sequence 4096, bf16 compute, fp32 parameters and Adam moments, remat "full" (plan's choice).
On the CPU: the tiny config against the CPU's measured matrix-product peak in the step's
compute dtype. Reported: step time (median), tokens/s per device, and MFU = model FLOPs per
step (counted on the step's jaxpr, as `plan` and `train` count them; HFU: with the recomputed
forwards) ÷ (step time × devices × peak), the peak from the device's data sheet
(omni_jax.train.metric_logger.PEAK_FLOPS) or, on the CPU, measured here.
experiments/accelerator_checks.py runs `measure_step` with the accelerator's defaults.

    python experiments/bench_train.py                       # the device present, its default
    python experiments/bench_train.py --config configs/omni_emotion.py:7b --llm 1.5b --batch 8 --seq 4096
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import bench_common  # XLA:CPU options before JAX starts; the host header
import jax
import jax.numpy as jnp
import numpy as np

from omni_jax import registry
from omni_jax.config_flags import load_config
from omni_jax.flops import count_flops
from omni_jax.modality_tokens import IGNORE, multimodal_prompt_ids
from omni_jax.sharding import make_mesh
from omni_jax.train.metric_logger import peak_flops
from omni_jax.train.plan import abstract_batch
from omni_jax.train.step import make_trainer, training_model_config

# Language models that keep the real towers but shrink the step to one accelerator's memory.
LLM_SHAPES = {
    "1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
                 num_kv_heads=2, head_dim=128, tie_word_embeddings=True),
}


def synthetic_batch(cfg, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch shaped as the input pipeline gives it: each row a multimodal prompt padded with
    random text to `seq`, the text after the media blocks as the answer (labels)."""
    rng = np.random.default_rng(seed)
    shapes = abstract_batch(cfg, batch, seq)
    prompt = multimodal_prompt_ids(cfg.model, before=[1, 2, 3], video="pixel_values_videos" in shapes,
                                   audio="input_features" in shapes)
    answer = seq - prompt.size
    ids = np.stack(
        [np.concatenate([prompt, rng.integers(0, cfg.model.text.vocab_size // 2, answer)]) for _ in range(batch)]
    )
    labels = ids.copy()
    labels[:, :prompt.size] = IGNORE
    out = {"input_ids": ids.astype(np.int32), "attention_mask": np.ones_like(ids, np.int32),
           "labels": labels.astype(np.int32)}
    for name, spec in shapes.items():
        if name not in out:
            out[name] = (np.ones(spec.shape, bool) if spec.dtype == jnp.bool_
                         else rng.standard_normal(spec.shape).astype(spec.dtype))
    return out


def measure_step(config: str, llm: str | None, batch: int, seq: int, microbatches: int = 1,
                 remat: str | None = None, compute_dtype: str | None = None, steps: int = 10) -> dict[str, Any]:
    """The train step of `config` (its LM reshaped to LLM_SHAPES[llm] when given) on every device
    present, mesh fsdp over all: a synthetic batch of `batch` clips × `seq` tokens, `steps` timed
    steps after 2 untimed; step time, tokens/s/device, FLOPs, the peak and MFU/HFU (None, with
    `peak_source` saying why, where the device kind has no data-sheet peak)."""
    accelerator = jax.default_backend() != "cpu"
    cfg = load_config(config)
    if llm:
        cfg.model.text.update(LLM_SHAPES[llm])
        cfg.model.face.llm_width = cfg.model.text.hidden_size
    cfg.train.microbatches = microbatches
    if remat:
        cfg.train.remat = remat
    if compute_dtype:
        cfg.train.compute_dtype = compute_dtype
    devices = jax.devices()
    mesh = make_mesh(1, len(devices), 1)
    model_config = training_model_config(cfg)
    trainer = make_trainer(model_config, mesh, cfg.train, total_steps=1000)
    # counter-based keys: threefry's init compiles for tens of seconds on a CPU, and the values do
    # not change a step's time
    with jax.default_prng_impl("unsafe_rbg"):
        params = registry.init_params(registry.FAMILIES["omni_emotion"], model_config, mesh)
    state, frozen = trainer.init_state(params)
    inputs = jax.device_put(synthetic_batch(cfg, batch, seq), trainer.batch_sharding)
    with trainer.activate():
        flops = count_flops(trainer.step.trace(state, frozen, inputs).jaxpr.jaxpr)
        times = []
        for _ in range(steps + 2):
            start = time.perf_counter()
            state, metrics = trainer.step(state, frozen, inputs)
            float(metrics["loss"])
            times.append(time.perf_counter() - start)
    step = statistics.median(times[2:])
    kind = devices[0].device_kind
    peak = peak_flops(kind) if accelerator else bench_common.measured_peak(cfg.train.compute_dtype)
    source = "data sheet" if accelerator else "measured matmul"
    if peak is None:
        source = f"none: no data-sheet peak for {kind!r} (omni_jax.train.metric_logger.PEAK_FLOPS)"
    utilisation = lambda count: count / (step * len(devices) * peak) if peak else None
    return {"device": f"{len(devices)} × {kind}", "config": config, "llm": llm, "batch": batch, "seq": seq,
            "microbatches": microbatches, "remat": cfg.train.remat, "compute_dtype": cfg.train.compute_dtype,
            "flops_per_step": flops.model, "hardware_flops_per_step": flops.hardware, "step_seconds": step,
            "compile_and_first_step_seconds": times[0], "tokens_per_s_per_device": batch * seq / step / len(devices),
            "peak_flops_per_device": peak, "peak_source": source, "mfu": utilisation(flops.model),
            "hfu": utilisation(flops.hardware), "loss": float(metrics["loss"])}


def main() -> None:
    accelerator = jax.default_backend() != "cpu"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="omni_emotion:" + ("7b" if accelerator else "tiny"))
    parser.add_argument("--llm", choices=sorted(LLM_SHAPES), default="1.5b" if accelerator else None,
                        help="replace the language model's shape (the towers stay)")
    parser.add_argument("--batch", type=int, default=8 if accelerator else 4, help="global batch (clips)")
    parser.add_argument("--seq", type=int, default=4096 if accelerator else 128)
    parser.add_argument("--microbatches", type=int, default=1)
    parser.add_argument("--remat", default=None, help="the language model's remat policy (default: the config's)")
    parser.add_argument("--compute-dtype", choices=["float32", "bfloat16"], default=None,
                        help="the step's compute dtype (default: the config's)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 2 untimed)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {**bench_common.run_info(), **measure_step(args.config, args.llm, args.batch, args.seq, args.microbatches,
                                                         args.remat, args.compute_dtype, args.steps)}
    print(f"{results['device']}: {args.config} (llm {args.llm or 'as configured'}), batch {args.batch} × "
          f"{args.seq} tokens, {results['compute_dtype']} compute, remat {results['remat']}")
    peak, mfu = results["peak_flops_per_device"], results["mfu"]
    print(f"  step {results['step_seconds'] * 1e3:.1f} ms (median of {args.steps}), "
          f"{results['tokens_per_s_per_device']:.0f} tokens/s/device, {results['flops_per_step']:.3g} FLOPs/step, "
          f"peak {peak or float('nan'):.3g} FLOP/s ({results['peak_source']}): MFU "
          f"{mfu if mfu is not None else float('nan'):.1%}")
    bench_common.finish(results, args.json)


if __name__ == "__main__":
    main()
