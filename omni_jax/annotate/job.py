"""`omni-jax annotate --manifest IN.jsonl --out DIR`: every line of a manifest through the
annotator, split over processes, resumable; then the records, the manifests and the counts.

Process h of H takes lines h, h + H, … (`process_files.lines_in_rounds`), `clips_in_flight` at
a time in threads (the endpoints' concurrency bounds what is sent at once); each finished line
is appended to DIR/.records.progress-h-of-H, so a killed or stopped run resumes after it. Process
0 merges DIR/records.jsonl and writes the outputs (`annotate.outputs`). Running the same command
again on a finished DIR redoes every line from the reply cache (DIR/cache unless `cache` says
otherwise): it sends only what was not answered before (the failed clips' requests), and
keeps the human reviews imported into the records.
"""
from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
from tqdm import tqdm

from omni_jax.annotate.annotator import Annotator, endpoints_of
from omni_jax.annotate import outputs, prompts
from omni_jax.annotate.media import FacesByTime
from omni_jax.data.manifest import ManifestSource
from omni_jax.process_files import lines_in_rounds, manifest_identity, write_merged
from omni_jax.stopping import StopRequest

RECORDS = "records.jsonl"
# settings that change no record: left out of the resume key
UNRECORDED = ("concurrency", "retries", "timeout", "api_key_env", "base_url")


def resume_key(manifest: Path, cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """What a progress file must have been made with to be resumed."""
    endpoints = {name: {k: v for k, v in e.items() if k not in UNRECORDED} for name, e in cfg.endpoints.items()}
    return {"manifest": manifest_identity(manifest), "prompts": prompts.VERSION,
            "endpoints": endpoints, "media": cfg.media.to_dict(), "review": cfg.review.to_dict(),
            "processes": jax.process_count()}


def read_records(out: Path) -> list[dict[str, Any]]:
    path = out / RECORDS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def keep_human_reviews(previous: list[dict[str, Any]]):
    """write_merged's annotate: the human reviews of `previous` records carried to the new ones
    of the same line and clip."""
    reviews = {(r["line"], r.get("id")): r["human_review"] for r in previous if "human_review" in r}

    def carry(merged: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, "human_review": reviews[(r["line"], r.get("id"))]} if (r["line"], r.get("id")) in reviews
                else r for r in merged]
    return carry


def face_finder(face_detector: str) -> FacesByTime:
    """RetinaFace and the tracker, one clip at a time (the detector is not shared between threads)."""
    from omni_jax.faces.finder import tracked_faces

    finder, lock = tracked_faces(face_detector), threading.Lock()

    def find(frames, times):
        with lock:
            return finder.faces_by_time(frames, times)
    return find


def run(manifest: str | os.PathLike, out: str | os.PathLike, cfg: ml_collections.ConfigDict,
        stop: StopRequest | None = None, progress: bool = True) -> dict[str, Any]:
    """Annotates `manifest` into `out` (module docstring); returns the counts, the requests and
    tokens per endpoint, and the speed. Raises Stopped when `stop` is reached before the end."""
    # the lines are clips to describe: they need no conversation (question="" stands in for one)
    source, out = ManifestSource(manifest, question=""), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    endpoints = endpoints_of(cfg, str(cfg.cache or out / "cache"))
    # a clip waits on 3 rounds of requests (cues, review, score): 3 × the concurrency keeps every slot busy
    in_flight = cfg.clips_in_flight or 3 * max(e.concurrency for e in endpoints.values())
    index, count = jax.process_index(), jax.process_count()
    previous = read_records(out) if index == 0 else []
    start, cpu = time.perf_counter(), time.process_time()
    with concurrent.futures.ThreadPoolExecutor(sum(e.concurrency for e in endpoints.values())) as requests:
        annotator = Annotator(cfg, endpoints, source, functools.cache(lambda: face_finder(cfg.media.face_detector)),
                              requests)
        record_file = out / f".records.progress-{index}-of-{count}"
        bar = lambda done, total: tqdm(total=total, initial=done, unit="clip", desc=f"annotate {source.path.name}",
                                       disable=not progress)
        records = lines_in_rounds(len(source), lambda element: annotator(source[element]), record_file,
                                  resume_key(source.path, cfg), stop, in_flight, bar, what=str(manifest))
    merged = write_merged(records, out / RECORDS, annotate=keep_human_reviews(previous))
    record_file.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    figures = {k: v for e in endpoints.values() for k, v in e.figures().items()}
    speed = {"seconds": round(seconds, 2), "clips_per_second": round(len(records) / seconds, 3) if seconds else 0.0,
             "cpu_seconds_per_clip": round((time.process_time() - cpu) / max(len(records), 1), 4)}
    if index:
        return {"records": str(out / RECORDS), **figures, **speed}
    return {"records": str(out / RECORDS), **outputs.write_outputs(merged, out, cfg), **figures, **speed}
