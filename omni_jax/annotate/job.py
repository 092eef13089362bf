"""`omni-jax annotate --manifest IN.jsonl --out DIR`: every line of a manifest through the
annotator, split over processes, resumable; then the records, the manifests and the counts.
With --review-sheet or --import-review instead: the human review (`annotate.review`).

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
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections

from omni_jax.annotate import outputs, prompts, review
from omni_jax.annotate.annotator import Annotator, endpoints_of
from omni_jax.annotate.media import FacesByTime
from omni_jax.annotate.outputs import RECORDS, read_records
from omni_jax.config_flags import AT_LEAST_0, AT_LEAST_1, FRACTION, POSITIVE, Range, check_ranges
from omni_jax.data.manifest import ManifestSource, too_many_skipped
from omni_jax.errors import InputError
from omni_jax.process_files import lines_in_rounds, manifest_identity, write_merged
from omni_jax.progress import QUIET, Progress
from omni_jax.stopping import StopRequest

FIELDS = {"endpoints.*.concurrency": AT_LEAST_1, "endpoints.*.retries": AT_LEAST_0, "endpoints.*.timeout": POSITIVE,
          "media.frame_rate": POSITIVE, "media.max_frames": AT_LEAST_1, "media.face_rate": POSITIVE,
          "media.max_faces": AT_LEAST_1, "media.face_size": AT_LEAST_1, "media.image_side": AT_LEAST_1,
          "media.jpeg_quality": Range(1, 100), "media.face_time_tolerance": AT_LEAST_0,
          "media.max_audio_seconds": POSITIVE, "media.decode_threads": AT_LEAST_0, "review.threshold": Range(0, 10),
          "sheet.per_source": AT_LEAST_1, "clips_in_flight": AT_LEAST_0, "max_failure_fraction": FRACTION}
# settings that change no record: left out of the resume key
UNRECORDED = ("concurrency", "retries", "timeout", "api_key_env", "base_url")


def resume_key(manifest: Path, cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """What a progress file must have been made with to be resumed."""
    endpoints = {name: {k: v for k, v in e.items() if k not in UNRECORDED} for name, e in cfg.endpoints.items()}
    return {"manifest": manifest_identity(manifest), "prompts": prompts.VERSION,
            "endpoints": endpoints, "media": cfg.media.to_dict(), "review": cfg.review.to_dict(),
            "processes": jax.process_count()}


def keep_human_reviews(previous: list[dict[str, Any]]) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    """write_merged's annotate: the human reviews of `previous` records carried to the new ones
    of the same line and clip."""
    reviews = {(r["line"], r.get("id")): r["human_review"] for r in previous if "human_review" in r}

    def carry(merged: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, "human_review": reviews[(r["line"], r.get("id"))]} if (r["line"], r.get("id")) in reviews
                else r for r in merged]
    return carry


def face_finder(detector: ml_collections.ConfigDict) -> FacesByTime:
    """RetinaFace and the tracker, one clip at a time (the detector is not shared between threads)."""
    from omni_jax.faces.finder import tracked_faces

    finder, lock = tracked_faces(detector), threading.Lock()

    def find(frames: Any, times: Any) -> list[dict[str, Any]]:
        with lock:
            return finder.faces_by_time(frames, times)
    return find


def run(cfg: ml_collections.ConfigDict, *, manifest: str | os.PathLike | None = None,
        out: str | os.PathLike | None = None, review_sheet: str | os.PathLike | None = None,
        import_review: str | os.PathLike | None = None, stop: StopRequest | None = None,
        progress: Progress = QUIET) -> dict[str, Any]:
    """Annotates `manifest` into `out` (module docstring); or, with `review_sheet`, draws the
    review sheet from `out`'s records (`out` default: the sheet's folder); or, with
    `import_review`, reads a filled sheet back into them. Returns the counts, the requests and
    tokens per endpoint, and the speed, with `error` when more than max_failure_fraction of the
    lines failed or could not be read. Raises Stopped when `stop` is reached before the end."""
    check_ranges(cfg, FIELDS)
    sheet = review_sheet or import_review
    if sum(x is not None for x in (manifest, review_sheet, import_review)) != 1 or (sheet is None and out is None):
        raise InputError("omni-jax annotate takes --manifest IN.jsonl --out DIR, or --review-sheet DIR/review.csv, "
                         "or --import-review DIR/review.csv")
    out = Path(out) if out is not None else Path(sheet).parent
    if review_sheet is not None:
        return review.write_sheet(out, review_sheet, cfg.sheet.per_source, cfg.sheet.seed)
    if import_review is not None:
        return review.import_sheet(out, import_review, cfg)
    return annotate(cfg, manifest, out, stop, progress)


def annotate(cfg: ml_collections.ConfigDict, manifest: str | os.PathLike, out: Path, stop: StopRequest | None,
             progress: Progress) -> dict[str, Any]:
    # the lines are clips to describe: they need no conversation (question="" stands in for one)
    source = ManifestSource(manifest, question="")
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
        bar = lambda done, total: progress.bar(total=total, initial=done, unit="clip",
                                               desc=f"annotate {source.path.name}")
        records = lines_in_rounds(len(source), lambda element: annotator(source[element]), record_file,
                                  resume_key(source.path, cfg), stop, in_flight, bar, what=str(manifest))
    merged = write_merged(records, out / RECORDS, annotate=keep_human_reviews(previous))
    record_file.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    figures = {k: v for e in endpoints.values() for k, v in e.figures().items()}
    speed = {"clips_per_second": round(len(records) / seconds, 3) if seconds else 0.0,
             "cpu_seconds_per_clip": round((time.process_time() - cpu) / max(len(records), 1), 4)}
    if index:
        return {"records": str(out / RECORDS), **figures, **speed}
    summary = {"records": str(out / RECORDS), **outputs.write_outputs(merged, out, cfg), **figures, **speed}
    # failed requests and clips that could not be read cost their lines; too many of them fail the run
    lost = [(r["failure"]["step"], f"{r.get('id')}: {r['failure']['message']}") if r["status"] == "failed" else
            (r["skip"], f"{r.get('id')}: {r.get('message', r['skip'])}") for r in merged
            if r["status"] == "failed" or (r["status"] == "skipped" and r["skip"].startswith("unreadable/"))]
    failure = too_many_skipped(lost, len(merged), cfg.max_failure_fraction, "max_failure_fraction")
    return {**summary, "error": failure} if failure else summary
