"""Train-step throughput and MFU: the phase-3 (instruction-tuning) step of Omni-Emotion, as
`omni-jax train` builds it, on the devices present.

On an accelerator the default is the step the issue asks for: the 7B's towers (SigLIP so400m,
Whisper-large-v3 encoder, Swin-B) with a Qwen2-1.5B-shaped language model (`--llm 1.5b`),
sequence 4096, bf16 compute, fp32 parameters and Adam moments, remat "full" (plan's choice).
On the CPU: the tiny config against the CPU's measured matrix-product peak in the step's
compute dtype. Reported: step time (median), tokens/s per device, and MFU = FLOPs per step
(matrix products counted on the step's jaxpr, as `plan` and `train` count them) ÷ (step time ×
devices × peak), the peak from the device's data sheet (omni_jax.train.metric_logger.PEAK_FLOPS) or,
on the CPU, measured here.

    python experiments/bench_train.py                       # the device present, its default
    python experiments/bench_train.py --config configs/omni_emotion.py:7b --llm 1.5b --batch 8 --seq 4096
"""
from __future__ import annotations

import argparse
import statistics
import time

import bench_common  # XLA:CPU options before JAX starts; the host header
import jax
import jax.numpy as jnp
import numpy as np

from omni_jax import registry
from omni_jax.config_flags import load_config
from omni_jax.flops import matmul_flops
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
    ids = np.stack([np.concatenate([prompt, rng.integers(0, cfg.model.text.vocab_size // 2, answer)]) for _ in range(batch)])
    labels = ids.copy()
    labels[:, :prompt.size] = IGNORE
    out = {"input_ids": ids.astype(np.int32), "attention_mask": np.ones_like(ids, np.int32),
           "labels": labels.astype(np.int32)}
    for name, spec in shapes.items():
        if name not in out:
            out[name] = (np.ones(spec.shape, bool) if spec.dtype == jnp.bool_
                         else rng.standard_normal(spec.shape).astype(spec.dtype))
    return out


def main() -> None:
    accelerator = jax.default_backend() != "cpu"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/omni_emotion.py:" + ("7b" if accelerator else "tiny"))
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

    cfg = load_config(args.config)
    if args.llm:
        cfg.model.text.update(LLM_SHAPES[args.llm])
        cfg.model.face.llm_width = cfg.model.text.hidden_size
    cfg.train.microbatches = args.microbatches
    if args.remat:
        cfg.train.remat = args.remat
    if args.compute_dtype:
        cfg.train.compute_dtype = args.compute_dtype
    devices = jax.devices()
    mesh = make_mesh(1, len(devices), 1)
    model_config = training_model_config(cfg)
    trainer = make_trainer(model_config, mesh, cfg.train, total_steps=1000)
    params = registry.init_params(registry.FAMILIES["omni_emotion"], model_config, mesh)
    state, frozen = trainer.init_state(params)
    batch = jax.device_put(synthetic_batch(cfg, args.batch, args.seq), trainer.batch_sharding)
    with trainer.activate():
        flops = matmul_flops(trainer.step.trace(state, frozen, batch).jaxpr.jaxpr)
        times = []
        for i in range(args.steps + 2):
            start = time.perf_counter()
            state, metrics = trainer.step(state, frozen, batch)
            float(metrics["loss"])
            times.append(time.perf_counter() - start)
    step = statistics.median(times[2:])
    kind = devices[0].device_kind
    peak = peak_flops(kind) if accelerator else bench_common.measured_peak(cfg.train.compute_dtype)
    tokens = args.batch * args.seq
    results = {**bench_common.run_info(), "device": f"{len(devices)} × {kind}", "config": args.config,
               "llm": args.llm, "batch": args.batch, "seq": args.seq, "microbatches": args.microbatches,
               "remat": cfg.train.remat, "compute_dtype": cfg.train.compute_dtype, "flops_per_step": flops,
               "step_seconds": step, "tokens_per_s_per_device": tokens / step / len(devices),
               "peak_flops_per_device": peak, "peak_source": "data sheet" if accelerator else "measured matmul",
               "mfu": flops / (step * len(devices) * peak) if peak else None, "loss": float(metrics["loss"])}
    print(f"{results['device']}: {args.config} (llm {args.llm or 'as configured'}), batch {args.batch} × "
          f"{args.seq} tokens, {cfg.train.compute_dtype} compute, remat {cfg.train.remat}")
    print(f"  step {step * 1e3:.1f} ms (median of {args.steps}), {results['tokens_per_s_per_device']:.0f} "
          f"tokens/s/device, {flops:.3g} FLOPs/step, peak {peak or float('nan'):.3g} FLOP/s "
          f"({results['peak_source']}): MFU {results['mfu'] or float('nan'):.1%}")
    bench_common.finish(results, args.json)


if __name__ == "__main__":
    main()
