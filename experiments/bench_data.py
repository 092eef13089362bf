"""Input-pipeline throughput: clips/s per worker for 10-s 480p H.264 + AAC clips at the 7B config
(8 frames at 384 px, 8 face crops at 224 px, a 128-bin log-mel window, the chat template), and
where a worker's time goes.

1. Stages, one clip at a time in this process on one thread (what one grain worker does):
   decode (seek + decode 8 frames), resize (SigLIP preprocessing), faces (Haar detection),
   crops (face crops), audio (decode + resample), mel (log-mel), tokens (chat template).
2. End to end: `make_pipeline` with 1 and 2 worker processes, timed after the workers are up.

The clips (the synthetic generator's drawn face and voice in a scene, omni_jax.synth.clips, at
854×480) are written with PyAV into a temporary folder. Tokens use the package's word-level
tokenizer with Qwen2's template and the 7B special-token ids (no tokenizer download); Qwen2's
BPE costs about the same per clip, as the text is a few dozen tokens next to the 3,645-token
block inserted as ids.

    .venv/bin/python experiments/bench_data.py [--clips 6] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import threadpoolctl
from bench_common import run_info

from omni_jax.configs import omni_emotion
from omni_jax.data import audio, faces, pipeline, text, video
from omni_jax.data.media_writer import write_media
from omni_jax.modality_tokens import add_special_tokens
from omni_jax.synth import clips as synth
from omni_jax.synth.tokenizer import word_tokenizer

TURNS = [{"from": "human", "value": "<video>\nWhat emotion does the person show ? Explain ."},
         {"from": "gpt", "value": "The person looks happy : a wide smile and raised cheeks ."}]


def write_clips(folder: Path, count: int) -> list[Path]:
    """`count` 10-s 854×480 30-fps H.264 clips with a 16-kHz AAC voice and a face."""
    paths = []
    for i in range(count):
        cues = synth.clip_cues(synth.CLASSES[i % 7], np.random.default_rng(i), frame=(854, 480))
        voice = synth.synthesize_voice(cues["voice_name"], cues["speaker"], cues["voice_seed"], seconds=10.0)
        paths.append(write_media(folder / f"clip{i}.mp4", (synth.draw_frame(cues, t / 30) for t in range(300)), voice,
                                 fps=30, rate=synth.RATE, gop=60, codec_options=synth.X264_OPTIONS))
    return paths


def stage_seconds(clips: list[Path], cfg, tokenizer) -> dict[str, float]:
    """Median seconds per clip of each stage, single-threaded."""
    times: dict[str, list[float]] = {}

    def timed(name, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        times.setdefault(name, []).append(time.perf_counter() - start)
        return out

    for path in clips:
        frames = timed("decode", lambda: video.load_frames(path, cfg.model.num_frames).frames)
        timed("resize", video.preprocess_frames, frames, cfg.data.image_size)
        boxes = timed("faces", video.detect_faces, frames)
        timed("crops", faces.face_crops, frames, boxes, cfg.data.face_size)
        wave = timed("audio", audio.load_audio, path)
        timed("mel", lambda: audio.log_mel_spectrogram(audio.split_windows(wave, cfg.model.audio_windows)[0],
                                                       cfg.model.audio.num_mel_bins))
        timed("tokens", text.tokenize_conversation, TURNS, tokenizer, cfg.model, max(cfg.data.buckets))
    return {name: statistics.median(values) for name, values in times.items()}


def pipeline_clips_per_second(manifest: Path, cfg, tokenizer, workers: int, clips: int) -> float:
    """Clips/s through make_pipeline with `workers` processes, after the first batch (start-up)."""
    cfg.data.update(workers=workers, batch_size=1, epochs=None, prefetch=2)
    batches = iter(pipeline.make_pipeline(manifest, tokenizer, cfg))
    next(batches)
    start = time.perf_counter()
    for _ in range(clips):
        next(batches)
    return clips / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=6, help="distinct clips written (default 6)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cfg = omni_emotion.get_config("7b")
    words = " ".join(turn["value"] for turn in TURNS).replace("<video>", "").split()
    tokenizer = word_tokenizer(words, cfg.model.image_token_id - 3)  # <image>, <video> at the 7B's ids
    add_special_tokens(tokenizer, cfg.model)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        clips = write_clips(Path(tmp), args.clips)
        print(f"wrote {len(clips)} clips (10 s, 854x480, H.264 + AAC) in {time.perf_counter() - start:.1f} s")
        cv2.setNumThreads(1)
        with threadpoolctl.threadpool_limits(1):
            stages = stage_seconds(clips, cfg, tokenizer)
        manifest = Path(tmp) / "bench.jsonl"
        manifest.write_text("".join(json.dumps({"id": p.stem, "video": p.name, "conversations": TURNS}) + "\n"
                                    for p in clips))
        end_to_end = {w: pipeline_clips_per_second(manifest, cfg, tokenizer, w, 4 * args.clips) for w in (1, 2)}
    total = sum(stages.values())
    print(f"{'stage':<8} {'ms/clip':>8} {'share':>6}")
    for name, seconds in stages.items():
        print(f"{name:<8} {1e3 * seconds:>8.1f} {seconds / total:>6.0%}")
    print(f"{'total':<8} {1e3 * total:>8.1f}   -> {1 / total:.2f} clips/s on one thread")
    for workers, rate in end_to_end.items():
        print(f"pipeline, {workers} worker(s): {rate:.2f} clips/s ({rate / workers:.2f} per worker)")
    info = run_info()
    print(f"{info['machine']}; {info['date']}")
    if args.json:
        print(json.dumps({**info, "stage_ms": {k: round(1e3 * v, 2) for k, v in stages.items()},
                          "clips_per_second_one_thread": round(1 / total, 3),
                          "pipeline_clips_per_second": {str(w): round(r, 3) for w, r in end_to_end.items()}}))


if __name__ == "__main__":
    main()
