"""Batched greedy generation with video prompts: omni_jax's `generate` (the decoding core of
`omni-jax eval` and `infer`) vs transformers' `generate`, in one process, on the same weights.

Two LLaVA-OneVision models with random weights, built by transformers, saved, converted with
our converter and loaded with `load_pretrained` (unrolled LM layers, the inference layout):
  tiny   the test suite's shapes (Qwen2 with 2 layers of width 64, a 2-layer SigLIP)
  0.5b   Qwen2-0.5B's language model (24 layers, width 896, vocabulary 151,936) with a small
         SigLIP (2 layers, 56-px frames): generation, not the vision tower, is what is timed
Each row: a batch of B video prompts (2 frames + --prompt-tokens text tokens, left-padded rows
of different lengths), exactly --new-tokens new tokens per row (no EOS), float32. Figures:
clips/s and generated tokens/s (B × new tokens / wall time, the prefill with the vision tower
included), medians of --repeats runs, JAX and PyTorch taking turns, after an untimed warm-up
(compilation). Also how many greedy tokens agree.

    .venv/bin/python experiments/bench_generate.py [--models tiny,0.5b] [--batches 1,8,32] [--json]
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from bench_common import finish, interleaved_medians, run_info, sync, torch_device  # experiments/

import omni_jax
from omni_jax.conversion import convert_hf_to_orbax
from omni_jax.generate import generate
from omni_jax.modality_tokens import video_tokens

FRAMES = 2
TEXT = {  # Qwen2 shapes of the two models
    "tiny": dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2),
}
VISION = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, image_size=56,
              patch_size=14, vision_use_head=False)


def llava_config(name: str) -> transformers.LlavaOnevisionConfig:
    text = transformers.Qwen2Config(**TEXT[name], max_position_embeddings=4096, tie_word_embeddings=True,
                                    bos_token_id=None, eos_token_id=None, pad_token_id=0)
    vocab = text.vocab_size
    return transformers.LlavaOnevisionConfig(
        text_config=text, vision_config=transformers.SiglipVisionConfig(**VISION), vision_feature_layer=-1,
        vision_feature_select_strategy="full", image_token_index=vocab - 2, video_token_index=vocab - 1,
        tie_word_embeddings=True)


def build(name: str, seed: int) -> tuple[torch.nn.Module, Any, Any]:
    torch.manual_seed(seed)
    hf = transformers.LlavaOnevisionForConditionalGeneration(llava_config(name)).eval()
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        hf.save_pretrained(Path(tmp) / "hf")
        convert_hf_to_orbax(Path(tmp) / "hf", Path(tmp) / "ox")
        model, params = omni_jax.load_pretrained(Path(tmp) / "ox", scan_layers=False)
        params = jax.block_until_ready(params)
    return hf.to(torch_device()), model, params


def prompts(hf: torch.nn.Module, model: Any, batch: int, text_tokens: int, seed: int):
    """Left-padded [batch, length] ids (row i is i % 4 text tokens shorter), mask, frames."""
    rng = np.random.default_rng(seed)
    video_id, vocab = hf.config.video_token_index, hf.config.text_config.vocab_size
    block = np.full(video_tokens(model.config, FRAMES), video_id)
    rows = [np.concatenate([rng.integers(1, vocab - 2, 4), block, rng.integers(1, vocab - 2, text_tokens - i % 4)])
            for i in range(batch)]
    length = max(map(len, rows))
    ids = np.zeros((batch, length), np.int64)
    mask = np.zeros((batch, length), np.int64)
    for i, row in enumerate(rows):
        ids[i, length - len(row):], mask[i, length - len(row):] = row, 1
    size = hf.config.vision_config.image_size
    frames = rng.standard_normal((batch, FRAMES, size, size, 3)).astype(np.float32)
    return ids, mask, frames


def runs(hf: torch.nn.Module, model: Any, params: Any, ids: np.ndarray, mask: np.ndarray, frames: np.ndarray,
         new_tokens: int) -> dict[str, Any]:
    jax_inputs = dict(input_ids=jnp.asarray(ids, jnp.int32), attention_mask=jnp.asarray(mask, jnp.int32),
                      pixel_values_videos=jnp.asarray(frames))
    torch_inputs = dict(input_ids=torch.from_numpy(ids).to(torch_device()),
                        attention_mask=torch.from_numpy(mask).to(torch_device()),
                        pixel_values_videos=torch.from_numpy(frames).permute(0, 1, 4, 2, 3).to(torch_device()))

    def jax_run():
        return jax.block_until_ready(generate(model, params, max_new_tokens=new_tokens, **jax_inputs))

    def torch_run():
        with torch.inference_mode():
            return sync(hf.generate(**torch_inputs, do_sample=False, max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, pad_token_id=0)[:, ids.shape[1]:])

    return {"jax": jax_run, "torch": torch_run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,0.5b")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="text tokens around the video block")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    results = {**run_info(), "device": jax.devices()[0].device_kind, "torch_device": torch_device(),
               "new_tokens": args.new_tokens, "rows": []}
    print(f"{'model':>6}{'batch':>7}{'JAX clips/s':>13}{'torch clips/s':>15}{'JAX tok/s':>11}{'torch tok/s':>13}"
          f"{'JAX/torch':>11}{'agree':>8}")
    for name in args.models.split(","):
        hf, model, params = build(name, args.seed)
        for batch in map(int, args.batches.split(",")):
            ids, mask, frames = prompts(hf, model, batch, args.prompt_tokens, args.seed)
            outputs, seconds = interleaved_medians(runs(hf, model, params, ids, mask, frames, args.new_tokens),
                                                   args.repeats)
            agree = float(np.mean(np.asarray(outputs["jax"]) == outputs["torch"].cpu().numpy()))
            row = {"model": name, "batch": batch, "jax_s": seconds["jax"], "torch_s": seconds["torch"],
                   "jax_clips_s": batch / seconds["jax"], "torch_clips_s": batch / seconds["torch"],
                   "jax_tok_s": batch * args.new_tokens / seconds["jax"],
                   "torch_tok_s": batch * args.new_tokens / seconds["torch"],
                   "ratio": seconds["torch"] / seconds["jax"], "tokens_agree": agree}
            results["rows"].append(row)
            print(f"{name:>6}{batch:7d}{row['jax_clips_s']:13.2f}{row['torch_clips_s']:15.2f}{row['jax_tok_s']:11.1f}"
                  f"{row['torch_tok_s']:13.1f}{row['ratio']:10.2f}x{agree:8.0%}", flush=True)
        del hf, model, params
    finish(results, args.json)


if __name__ == "__main__":
    main()
