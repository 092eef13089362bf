"""Audio path benchmarks, JAX vs PyTorch in the same process on the same machine.

1. Whisper encoder: audio-seconds encoded per second, our jitted encoder vs transformers'
   `WhisperEncoder` (random weights converted with our converter; float32, CPU), for a
   whisper-base-shaped and (with --large) a large-v3-shaped encoder; JAX and PyTorch runs take
   turns, medians, and the spread of the per-pair ratios.
2. Log-mel: 30-s clips per second, `omni_jax.data.audio.log_mel_spectrogram` vs
   `WhisperFeatureExtractor`'s torch path, one clip per call as a loader worker calls them,
   taking turns clip by clip: medians and the spread (10th–90th percentile) of the per-clip
   ratios; its NumPy path (what it runs without torch) the same way on a tenth of the clips.

    .venv/bin/python experiments/bench_audio.py [--large] [--clips 100] [--json]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl
import torch
from bench_common import (  # experiments/
    finish,
    interleaved_times,
    ratio_spread,
    roofline,
    roofline_line,
    run_info,
    sync,
    torch_device,
)
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

import omni_jax
from omni_jax.conversion import convert_hf_to_orbax

SHAPES = {
    "base": dict(num_mel_bins=80, d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048),
    "large-v3": dict(num_mel_bins=128, d_model=1280, encoder_layers=32, encoder_attention_heads=20,
                     encoder_ffn_dim=5120),
    # experiments/accelerator_checks.py's CPU rehearsal
    "tiny": dict(num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128),
}


def bench_encoder(shape: str, batch: int, repeats: int, dtype: str) -> dict:
    """Encoder audio-seconds/s for both frameworks (torch on the GPU when there is one), plus
    their agreement."""
    config = WhisperConfig(**SHAPES[shape], decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64)
    torch.manual_seed(0)
    reference = WhisperEncoder(config).eval()
    features = np.random.RandomState(0).randn(batch, config.num_mel_bins, 3000).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        reference.save_pretrained(Path(tmp) / "hf")
        convert_hf_to_orbax(Path(tmp) / "hf", Path(tmp) / "ox")
        model, params = omni_jax.load_pretrained(Path(tmp) / "ox", dtype=dtype)
    reference = reference.to(torch_device(), getattr(torch, dtype))
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x)["last_hidden_state"])
    x = jnp.asarray(features)
    torch_x = torch.from_numpy(features).to(torch_device(), getattr(torch, dtype))
    with torch.inference_mode():
        outputs, times = interleaved_times({"jax": lambda: forward(params, x).block_until_ready(),
                                            "torch": lambda: sync(reference(torch_x).last_hidden_state)}, repeats)
    ours, theirs = np.asarray(outputs["jax"], np.float32), outputs["torch"].float().cpu().numpy()
    jax_s, torch_s = statistics.median(times["jax"]), statistics.median(times["torch"])
    audio_seconds = batch * 30.0
    return {"shape": shape, "batch": batch, "dtype": dtype, "jax_device": jax.devices()[0].device_kind,
            "torch_device": torch_device(), "jax_audio_s_per_s": audio_seconds / jax_s,
            "torch_audio_s_per_s": audio_seconds / torch_s, "ratio": torch_s / jax_s,
            "ratio_spread": ratio_spread(times["torch"], times["jax"]),
            "max_rel_err": float(np.abs(ours - theirs).max() / np.abs(theirs).max()),
            "roofline": roofline(forward, (params, x), jax_s, torch_s, dtype)}


def _per_clip_seconds(fn: Callable[[np.ndarray], Any], clip: np.ndarray) -> float:
    start = time.perf_counter()
    fn(clip)
    return time.perf_counter() - start


def bench_log_mel(clips: int, n_mels: int) -> dict:
    """Ours vs WhisperFeatureExtractor as called (its torch.stft path when torch is installed)
    and vs its NumPy path (what it runs where torch is not installed, e.g. a JAX-only worker),
    one 30-s clip per call, taking turns clip by clip."""
    from omni_jax.data.audio import log_mel_spectrogram  # here: GPU images may lack PyAV/soxr

    rng = np.random.RandomState(1)
    audio = [(0.1 * rng.randn(30 * 16000)).astype(np.float32) for _ in range(clips)]
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    ours_fn = lambda clip: log_mel_spectrogram(clip, n_mels)
    torch_fn = lambda clip: extractor(clip, sampling_rate=16000, return_tensors="np").input_features
    numpy_fn = lambda clip: extractor._np_extract_fbank_features(clip[None], "cpu")
    max_abs_err = float(np.abs(ours_fn(audio[0]) - torch_fn(audio[0])[0]).max())  # also warms caches
    times = {"ours": [], "torch": [], "numpy": []}
    for i, clip in enumerate(audio):
        times["ours"].append(_per_clip_seconds(ours_fn, clip))
        times["torch"].append(_per_clip_seconds(torch_fn, clip))
        if i % 10 == 0:  # the NumPy path loops over frames in Python: a tenth of the clips
            times["numpy"].append(_per_clip_seconds(numpy_fn, clip))
    median = {k: statistics.median(v) for k, v in times.items()}
    per_clip = np.asarray(times["torch"]) / np.asarray(times["ours"])
    return {"clips": clips, "n_mels": n_mels, "ours_clips_per_s": 1 / median["ours"],
            "extractor_torch_clips_per_s": 1 / median["torch"], "extractor_numpy_clips_per_s": 1 / median["numpy"],
            "ratio_vs_torch_path": median["torch"] / median["ours"],
            "ratio_vs_torch_path_p10_p90": tuple(float(x) for x in np.percentile(per_clip, [10, 90])),
            "ratio_vs_numpy_path": median["numpy"] / median["ours"], "max_abs_err": max_abs_err}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", action="store_true", help="also the large-v3-shaped encoder (~1 min per run)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--clips", type=int, default=100, help="log-mel clips, one per call (0: skip the log-mel benchmark)"
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="encoder parameters and compute on both sides (bfloat16 for GPU runs)")
    parser.add_argument("--mel-threads", type=int, default=1,
                        help="threads for the log-mel comparison (torch and BLAS alike; 1 = a loader worker)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    results = {**run_info(), "encoder": [], "log_mel": []}
    for shape in ["base"] + (["large-v3"] if args.large else []):
        r = bench_encoder(shape, args.batch, args.repeats, args.dtype)
        results["encoder"].append(r)
        print(f"encoder {shape:>8} {args.dtype} batch {r['batch']} (JAX on {r['jax_device']}, torch on "
              f"{r['torch_device']}): JAX {r['jax_audio_s_per_s']:7.1f} audio-s/s, "
              f"PyTorch {r['torch_audio_s_per_s']:7.1f} audio-s/s, ratio {r['ratio']:.2f}x "
              f"(runs {r['ratio_spread'][0]:.2f}-{r['ratio_spread'][1]:.2f}x), max rel err {r['max_rel_err']:.1e}\n"
              f"  {roofline_line(r['roofline'])}")
    torch.set_num_threads(args.mel_threads)
    for n_mels in (80, 128) if args.clips else ():
        with threadpoolctl.threadpool_limits(args.mel_threads):
            r = bench_log_mel(args.clips, n_mels)
        results["log_mel"].append(r)
        low, high = r["ratio_vs_torch_path_p10_p90"]
        print(f"log-mel {n_mels:>3} bins, {args.mel_threads} thread(s), {r['clips']} x 30 s one at a time: ours "
              f"{r['ours_clips_per_s']:6.1f} clips/s | WhisperFeatureExtractor torch path "
              f"{r['extractor_torch_clips_per_s']:6.1f} clips/s ({r['ratio_vs_torch_path']:.2f}x, per clip "
              f"{low:.2f}-{high:.2f}x p10-p90), NumPy path {r['extractor_numpy_clips_per_s']:6.2f} clips/s "
              f"({r['ratio_vs_numpy_path']:.1f}x) | max |d| {r['max_abs_err']:.1e}")
    finish(results, args.json)


if __name__ == "__main__":
    main()
