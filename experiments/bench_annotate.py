"""`omni-jax annotate`'s throughput against the bound its endpoints set.

A stub OpenAI-compatible server on localhost (omni_jax/testing/openai_stub.py) answers every request
after a fixed latency L; each clip costs 5 requests (scene and face to the vision endpoint, the
sound to the transcription endpoint, review and score to the reviewer). With every endpoint at
concurrency C the bound is min over endpoints of C / (requests to it per clip × L) = C / (2 L)
clips/s (the vision and reviewer endpoints take two requests per clip each; with one shared
pool of C it would be C / (5 L)). The measured rate is the steady one (`steady_rate`). L is C / 16 s, so
that every C has the same bound (8 clips/s) and the same CPU load, which on a 2-core machine
would otherwise be the limit at C = 128. Beside it: the CPU time per clip of our own work
(decoding, face crops, JPEG and WAV encoding), measured alone.

    .venv/bin/python experiments/bench_annotate.py [--clips 600] [--json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from omni_jax.annotate import job
from omni_jax.annotate.media import clip_media
from omni_jax.configs import annotate as annotate_config
from omni_jax.data.manifest import ManifestSource
from omni_jax.data.media_writer import write_media
from omni_jax.testing.openai_stub import Reply, Request, StubServer

REQUESTS_PER_CLIP = {"vision": 2, "transcription": 1, "reviewer": 2}
SECONDS, FPS, RATE = 2.0, 10, 16000


def clips(root: Path, count: int) -> Path:
    """`count` distinct 2-s clips (64×48, a colour and a tone of their own: no two requests
    alike, so none is answered from the cache) and their manifest, boxes given."""
    t = np.arange(int(SECONDS * RATE)) / RATE
    lines = []
    for i in range(count):
        colour = np.array([i % 256, (i * 7) % 256, (i // 256) * 40 % 256], np.uint8)
        frames = [np.broadcast_to(colour, (48, 64, 3)).copy()] * int(SECONDS * FPS)
        sound = (0.3 * np.sin(2 * np.pi * (200 + i) * t)).astype(np.float32)[None]
        write_media(root / f"{i}.mp4", frames, sound, fps=FPS, rate=RATE)
        lines.append(json.dumps({"id": f"c{i}", "video": f"{i}.mp4", "source": "bench", "label": "happy",
                                 "faces": [{"t": s, "box": [16, 12, 48, 40]} for s in np.arange(0, SECONDS, 0.5)]}))
    (root / "clips.jsonl").write_text("\n".join(lines) + "\n")
    return root / "clips.jsonl"


class Canned:
    """Valid replies of each kind, each naming a digest of its request (so the next prompts of
    a clip differ from every other clip's); the finishing time of each clip's last request."""

    def __init__(self):
        self.finished: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Reply:
        tag = hashlib.sha1(json.dumps(request.body, sort_keys=True).encode() + (request.audio or b"")).hexdigest()[:8]
        if request.kind == "transcription":
            return Reply({"text": f"words {tag}", "language": "en"})
        text = request.text
        if "frames of a video clip" in text:
            return Reply(json.dumps({"scene": f"a room {tag}", "people": "one person"}))
        if "crops of one person's face" in text:
            return Reply(json.dumps({"expressions": f"smiles {tag}", "age": 30, "gender": "female"}))
        if "ground-truth emotion label" in text:
            with self.lock:
                self.finished.append(time.monotonic())
            return Reply(json.dumps({"score": 8}))
        return Reply(json.dumps({"reason": f"she smiles {tag}", "emotions": ["happy"], "intensity": 3,
                                 "uncertain": False}))


def steady_rate(finished: list[float]) -> float:
    """Clips per second in the steady part of a run: the slope of clips finished against time
    (least squares) over the middle 60 % of the clips, by finishing time (taken when a clip's
    last request arrives, a fixed latency before its end). Completions come in waves at large
    L, so a count between two instants would depend on where they fall."""
    times = np.sort(np.asarray(finished))
    middle = slice(int(0.2 * len(times)), int(0.8 * len(times)))
    return float(np.polyfit(times[middle], np.arange(len(times))[middle], 1)[0])


def measure(manifest: Path, concurrency: int, latency: float, out: Path) -> dict:
    canned = Canned()
    with StubServer(canned, latency=latency) as server:
        cfg = annotate_config.get_config()
        for name in REQUESTS_PER_CLIP:
            cfg.endpoints[name].update(base_url=server.url, concurrency=concurrency, timeout=latency * 10 + 30)
        summary = job.run(manifest, out, cfg, progress=False)
    assert summary["kept"] == summary["lines"], summary
    bound = min(concurrency / (n * latency) for n in REQUESTS_PER_CLIP.values())
    rate = steady_rate(canned.finished)
    return {"concurrency": concurrency, "latency_s": latency, "bound_clips_per_s": round(bound, 3),
            "steady_clips_per_s": round(rate, 3), "of_bound": round(rate / bound, 3),
            "whole_run_clips_per_s": summary["clips_per_second"], "cpu_s_per_clip": summary["cpu_seconds_per_clip"]}


def media_cpu(manifest: Path, count: int) -> float:
    """CPU seconds per clip of decoding, crops and encoding alone (one thread)."""
    source, media = ManifestSource(manifest, question=""), annotate_config.get_config().media
    start = time.process_time()
    for i in range(count):
        clip_media(source.parse(source[i]), media, find=None)
    return (time.process_time() - start) / count


def host() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    extensions = [f for f in ("avx2", "avx512f", "amx_tile") if f in flags.split()]
    return f"{cpu}, {len(__import__('os').sched_getaffinity(0))} cores, {'/'.join(extensions)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=600)
    parser.add_argument("--concurrency", default="8,32,128")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = clips(Path(tmp), args.clips)
        rows = [measure(manifest, c, c / 16, Path(tmp) / f"out-{c}") for c in map(int, args.concurrency.split(","))]
        cpu = media_cpu(manifest, min(args.clips, 50))
    result = {"host": host(), "date": time.strftime("%Y-%m-%d"), "clips": args.clips, "rows": rows,
              "media_cpu_ms_per_clip": round(cpu * 1000, 2)}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['host']}, {result['date']}; {args.clips} clips of 2 s at 64x48; our CPU work per clip "
          f"(decode, crops, JPEG/WAV): {result['media_cpu_ms_per_clip']} ms")
    print("| C per endpoint | L (s) | bound (clips/s) | measured, steady | of the bound | whole run | CPU s/clip |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['latency_s']:g} | {r['bound_clips_per_s']:g} | {r['steady_clips_per_s']:g} "
              f"| {r['of_bound']:.1%} | {r['whole_run_clips_per_s']:g} | {r['cpu_s_per_clip']:g} |")


if __name__ == "__main__":
    main()
