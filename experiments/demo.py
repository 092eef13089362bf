"""End-to-end demo: a tiny LLaVA-OneVision answers a question about a video, in JAX and in torch.

Everything is built locally (no downloads): a randomly initialised transformers
`LlavaOnevisionForConditionalGeneration`, a byte-level BPE tokenizer trained on a few
sentences, and a 2 s clip of moving shapes written and read back with PyAV. The checkpoint
is converted with `omni_jax.conversion.convert_hf_to_orbax`, loaded with
`omni_jax.load_pretrained`, and the JAX forward pass and greedy generation are compared
with transformers on identical inputs. Exits non-zero if the logits or tokens disagree.

Run: `make demo` (or `.venv/bin/python experiments/demo.py`). Writes only under outputs/demo/.
"""
from __future__ import annotations

import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import av
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import logging as hf_logging
from transformers import (AutoTokenizer, LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                          PreTrainedTokenizerFast, Qwen2Config, SiglipVisionConfig)

import omni_jax
from omni_jax.conversion import convert_hf_to_orbax
from omni_jax.generate import greedy_generate
from omni_jax.models.llava_onevision import video_tokens

OUT = Path(__file__).resolve().parents[1] / "outputs" / "demo"
SEED = 0
VOCAB = 384
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
QUESTION = "What emotion is shown?"
FRAMES = 8
NEW_TOKENS = 12
PARITY_TOL = 5e-5
# Enough text that BPE learns the chat-template words plus a few answers.
CORPUS = [
    "<|im_start|>user\nWhat emotion is shown?<|im_end|>\n<|im_start|>assistant\n",
    "The person looks happy and relaxed.", "The speaker seems sad, almost crying.",
    "She is angry: her voice is loud and her brows are lowered.", "He is surprised by the news.",
    "A neutral face, calm voice, no strong emotion.", "Fear shows in the wide eyes and the trembling voice.",
    "Disgust: the nose wrinkles and the lips curl.", "They laugh together; the mood is joyful.",
]


@contextmanager
def timed(label: str, timings: dict[str, float]) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[label] = time.perf_counter() - start


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (as Qwen2's): every byte is representable, so any generated id decodes."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIALS[1:])


def build_hf_model(tokenizer: PreTrainedTokenizerFast) -> LlavaOnevisionForConditionalGeneration:
    """Tiny config: 56 px / patch 14 → 4×4 grid → 2×2 pooled = 4 tokens per frame."""
    text = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       tie_word_embeddings=False)
    vision = SiglipVisionConfig(image_size=56, patch_size=14, hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=2, vision_use_head=False)
    config = LlavaOnevisionConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                  vision_feature_layer=-1, vision_feature_select_strategy="full",
                                  image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                                  video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
                                  tie_word_embeddings=False)
    torch.manual_seed(SEED)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    # The default init (std 0.02) leaves logits nearly flat, so greedy choices would hinge on
    # 1e-6 margins; wider weights make the token comparison meaningful.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    return model


def write_clip(path: Path, seconds: float = 2.0, fps: int = 16, size: int = 64) -> str:
    """A square and a disc moving across a colour-cycling background; returns the codec used."""
    codec = next(c for c in ("libx264", "h264", "mpeg4") if c in av.codecs_available)
    yy, xx = np.mgrid[0:size, 0:size]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(int(seconds * fps)):
            t = i / (seconds * fps)
            img = np.empty((size, size, 3), np.uint8)
            img[:] = np.array([40 + 150 * t, 60, 200 - 150 * t]).astype(np.uint8)
            x0 = int(t * (size - 16))
            img[8:24, x0:x0 + 16] = (255, 220, 0)
            cx, cy = size - 12 - t * (size - 24), size / 2 + 16 * np.sin(2 * np.pi * t)
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < 64] = (0, 200, 255)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)
    return codec


def read_clip(path: Path, frames: int, size: int) -> tuple[np.ndarray, int]:
    """Decodes every frame, samples `frames` uniformly, resizes (bicubic, as the HF video
    processor) and applies SigLIP normalisation. Returns ([1, frames, size, size, 3], total)."""
    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
    picks = np.linspace(0, len(decoded) - 1, frames).round().astype(int)
    rgb = np.stack([decoded[i].to_ndarray(width=size, height=size, format="rgb24", interpolation="BICUBIC")
                    for i in picks])
    pixels = (rgb.astype(np.float32) / 255.0 - 0.5) / 0.5
    return pixels[None], len(decoded)


def build_prompt(tokenizer: PreTrainedTokenizerFast, placeholders: int) -> np.ndarray:
    """Qwen2 chat-template layout with the video expanded to its placeholder tokens."""
    text = f"<|im_start|>user\n{'<video>' * placeholders}\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    return np.asarray([tokenizer(text)["input_ids"]], np.int32)


def run_jax(model: nn.Module, params: Any, ids: np.ndarray, videos: np.ndarray, eos: int, pad: int,
            timings: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Forward logits and greedy tokens; the compiled re-run shows the steady-state cost."""
    mask = jnp.ones_like(ids)
    forward = jax.jit(lambda p, i, m, v: model.apply({"params": p}, input_ids=i, attention_mask=m,
                                                     pixel_values_videos=v)["logits"])
    with timed("jax forward (incl. compile)", timings):
        logits = np.asarray(forward(params, ids, mask, videos))
    gen = lambda: np.asarray(greedy_generate(model, params, ids, mask, max_new_tokens=NEW_TOKENS, eos_token_id=eos,
                                             pad_token_id=pad, pixel_values_videos=videos))
    with timed("jax greedy (incl. compile)", timings):
        tokens = gen()
    with timed("jax greedy (compiled)", timings):
        gen()
    return logits, tokens


def run_torch(model: LlavaOnevisionForConditionalGeneration, ids: np.ndarray, videos: np.ndarray, eos: int, pad: int,
              timings: dict[str, float]) -> tuple[np.ndarray, np.ndarray, float]:
    """transformers wants channels-first videos [batch, frames, C, H, W]."""
    inputs = dict(input_ids=torch.from_numpy(ids.astype(np.int64)),
                  attention_mask=torch.ones(ids.shape, dtype=torch.long),
                  pixel_values_videos=torch.from_numpy(np.ascontiguousarray(videos.transpose(0, 1, 4, 2, 3))))
    with torch.no_grad():
        with timed("torch forward", timings):
            logits = model(**inputs).logits.numpy()
        with timed("torch generate", timings):
            out = model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=eos,
                                 pad_token_id=pad, output_scores=True, return_dict_in_generate=True)
    new = out.sequences[0, ids.shape[1]:].numpy()
    # generate() stops early at EOS; greedy_generate pads to a fixed length.
    tokens = np.full((1, NEW_TOKENS), pad, np.int64)
    tokens[0, :len(new)] = new
    # Smallest top-1 vs top-2 gap over the steps: how robust the greedy comparison is.
    margin = min(float(np.diff(np.sort(s[0].numpy())[-2:])[0]) for s in out.scores)
    return logits, tokens, margin


def main() -> int:
    hf_logging.disable_progress_bar()  # keep the summary readable
    shutil.rmtree(OUT, ignore_errors=True)  # idempotent: the converter refuses an existing dst
    hf_dir, jax_dir, clip = OUT / "hf", OUT / "orbax", OUT / "clip.mp4"
    hf_dir.mkdir(parents=True)
    timings: dict[str, float] = {}

    with timed("build + save HF model and tokenizer", timings):
        tokenizer = build_tokenizer()
        hf_model = build_hf_model(tokenizer)
        hf_model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
    with timed("convert to orbax", timings):
        convert_hf_to_orbax(hf_dir, jax_dir, progress=False)
    with timed("load_pretrained", timings):
        model, params = omni_jax.load_pretrained(jax_dir)
    cfg = model.config
    # The tokenizer travelled with the conversion: use the converted directory's copy from here on.
    tokenizer = AutoTokenizer.from_pretrained(jax_dir)

    with timed("write + decode clip", timings):
        codec = write_clip(clip)
        videos, total_frames = read_clip(clip, FRAMES, cfg.vision.image_size)
    placeholders = video_tokens(cfg, FRAMES)
    ids = build_prompt(tokenizer, placeholders)
    found = int((ids == cfg.video_token_id).sum())
    assert found == placeholders, f"prompt has {found} <video> tokens, the model expects {placeholders}"

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    logits, tokens = run_jax(model, params, ids, videos, eos, pad, timings)
    ref_logits, ref_tokens, margin = run_torch(hf_model, ids, videos, eos, pad, timings)

    parity = float(np.abs(logits - ref_logits).max() / np.abs(ref_logits).max())
    same_tokens = bool(np.array_equal(tokens, ref_tokens))
    ok = parity <= PARITY_TOL and same_tokens

    print("== omni_jax demo: tiny LLaVA-OneVision on a video ==")
    print(f"HF checkpoint     {hf_dir}")
    print(f"converted         {jax_dir}  ({', '.join(sorted(p.name for p in jax_dir.iterdir()))})")
    print(f"clip              {clip}  ({codec}, {total_frames} frames decoded, {FRAMES} sampled)")
    print(f"videos            {videos.shape} channels-last, range [{videos.min():.2f}, {videos.max():.2f}]")
    print(f"prompt            {ids.shape[1]} tokens, {placeholders} <video> (= {FRAMES} frames x "
          f"{(placeholders - 1) // FRAMES} + newline), vocab {cfg.text.vocab_size}")
    print(f"logits            {logits.shape}")
    print(f"JAX tokens        {tokens[0].tolist()}")
    print(f"torch tokens      {ref_tokens[0].tolist()}")
    # Random weights: the answer is noise (often lone bytes, hence the raw BPE pieces too).
    print(f"JAX answer        {tokenizer.decode(tokens[0], skip_special_tokens=True)!r}")
    print(f"  as BPE pieces   {tokenizer.convert_ids_to_tokens(tokens[0].tolist())}")
    print(f"torch answer      {tokenizer.decode(ref_tokens[0], skip_special_tokens=True)!r}")
    print("timings (s)")
    for label, seconds in timings.items():
        print(f"  {label:<36} {seconds:8.3f}")
    print(f"parity            max|dlogits|/max|ref| = {parity:.2e} (tolerance {PARITY_TOL:.0e}) "
          f"{'PASS' if parity <= PARITY_TOL else 'FAIL'}")
    print(f"greedy tokens     {'equal' if same_tokens else 'DIFFER'} to transformers generate(do_sample=False) "
          f"(smallest top-2 logit gap {margin:.3f})")
    print("RESULT            " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
