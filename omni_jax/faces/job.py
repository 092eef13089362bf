"""`omni-jax faces`: a manifest in, the same manifest out with each clip's principal face by time.

For every line with a video and no boxes (or every line with a video, with `redo`): frames at
`rate` per second over the whole clip plus the clip's `num_frames` sampled frames (the ones the
model sees) are decoded, detected (RetinaFace), cut into shots and tracked (`data.tracks`), and
the line gets `"faces": [{"t": s, "box": [x0, y0, x1, y1], "score": p, "track": k} or
{"t": s, "box": null}, ...]`. Every other line is written as it came: lines with boxes (unless
`redo`), without a video, malformed JSON, and clips that cannot be read (counted by reason),
byte for byte.

Processes: process h of H takes lines h, h + H, h + 2H, … in rounds of one line each; after each
round it appends its result to its progress file (`process_files`), so a killed or stopped
run resumes after the last round every process finished, losing at most that round and
writing no line twice; at the end process 0 merges the parts in manifest order into `out`
(written under a temporary name, renamed into place).
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from omni_jax.config_flags import AT_LEAST_1, FRACTION, POSITIVE, check_ranges
from omni_jax.data import video
from omni_jax.data.errors import ExampleError
from omni_jax.data.manifest import ManifestSource, resolve, too_many_skipped
from omni_jax.data.pipeline import local_file
from omni_jax.errors import OutputExistsError
from omni_jax.faces import preview
from omni_jax.faces.finder import TrackedFaces, tracked_faces
from omni_jax.process_files import lines_in_rounds, manifest_identity, write_merged
from omni_jax.progress import QUIET, Progress
from omni_jax.stopping import StopRequest

log = logging.getLogger(__name__)

FIELDS = {"faces.rate": POSITIVE, "faces.num_frames": AT_LEAST_1, "faces.batch_size": AT_LEAST_1,
          "faces.max_skip_fraction": FRACTION}


def needs_faces(entry: Any, redo: bool) -> bool:
    """A line the job detects in: a JSON object with a video and, unless `redo`, no boxes."""
    return isinstance(entry, dict) and bool(entry.get("video")) and (redo or not entry.get("faces"))


def clip_faces(path: str, finder: TrackedFaces, rate: float, num_frames: int,
               preview_dir: Path | None = None, name: str = "") -> list[dict[str, Any]]:
    """The principal face by time over `path`'s frames at `rate` plus its sampled frames;
    raises ExampleError for a clip that cannot be read."""
    clip = video.load_frames(path, num_frames, rate=rate)
    found = finder.detector(clip.frames)
    faces = finder.faces_by_time(clip.frames, list(clip.timestamps), found)
    if preview_dir is not None:
        preview.contact_sheet(clip.frames, clip.timestamps, found, faces, preview_dir / f"{name}.png")
    return faces


def _process_line(number: int, text: bytes, manifest: ManifestSource, finder: TrackedFaces, rate: float,
                  num_frames: int, redo: bool, preview_dir: Path | None) -> dict[str, Any]:
    """One manifest line → its progress record: {"line", "status", and "entry" (the line with
    its faces) or "text" (the line as it came: not detected in), ...}."""
    as_given = text.decode("utf-8", "replace").rstrip("\r\n")
    try:
        entry = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"line": number, "text": as_given, "status": "malformed_json"}
    if not needs_faces(entry, redo):
        status = ("had_boxes" if isinstance(entry, dict) and entry.get("video") else "no_video")
        return {"line": number, "text": as_given, "status": status}
    name = f"{number:06d}-{str(entry.get('id', ''))[:60]}".replace("/", "_")
    try:
        with local_file(resolve(str(entry["video"]), manifest.path.parent)) as path:
            faces = clip_faces(path, finder, rate, num_frames, preview_dir, name)
    except ExampleError as error:
        log.warning("%s:%d (%s): %s", manifest.path, number, error.reason, error)
        return {"line": number, "text": as_given, "status": f"unreadable/{error.reason}",
                "message": f"{manifest.path}:{number}: {error}"}
    found = sum(f["box"] is not None for f in faces)
    return {"line": number, "entry": {**entry, "faces": faces}, "status": "detected",
            "times": len(faces), "with_face": found, "tracks": len({f["track"] for f in faces if "track" in f})}


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Clips detected, the faces (tracks) found per clip, the share of their times with a face,
    clips with none, the other lines by kind."""
    statuses = Counter(r["status"] for r in records)
    detected = [r for r in records if r["status"] == "detected"]
    shares = [r["with_face"] / r["times"] for r in detected if r["times"]]
    return {"lines": len(records), "clips": len(detected),
            "faces_per_clip": round(float(np.mean([r["tracks"] for r in detected])), 4) if detected else 0.0,
            "times_with_face": round(float(np.mean(shares)), 4) if shares else 0.0,
            "clips_without_face": sum(r["with_face"] == 0 for r in detected),
            "boxes_kept": statuses["had_boxes"], "without_video": statuses["no_video"],
            "malformed": statuses["malformed_json"],
            "unreadable": {k.split("/", 1)[1]: n for k, n in sorted(statuses.items()) if k.startswith("unreadable/")}}


def resume_key(manifest: Path, finder: TrackedFaces, rate: float, num_frames: int, redo: bool) -> dict[str, Any]:
    """What a progress file must have been made with to be resumed."""
    detector = finder.detector
    return {"manifest": manifest_identity(manifest), "rate": rate,
            "num_frames": num_frames,
            "redo": redo, "weights": detector.weights, "max_side": detector.max_side,
            "score_threshold": detector.score_threshold, "tracker": vars(finder.tracker),
            "processes": jax.process_count()}


def run(cfg: ml_collections.ConfigDict, *, manifest: str | os.PathLike, out: str | os.PathLike,
        preview: str | os.PathLike | None = None, stop: StopRequest | None = None,
        progress: Progress = QUIET) -> dict[str, Any]:
    """Writes `out` (module docstring) with the detector and settings of `cfg.faces`; returns the
    summary, with `error` when more than faces.max_skip_fraction of the clips could not be read.
    Raises Stopped when `stop` is reached before the last round (the same call resumes),
    OutputExistsError when `out` exists."""
    check_ranges(cfg, FIELDS)
    settings = cfg.faces
    source, out = ManifestSource(manifest), Path(out)
    if out.exists():
        raise OutputExistsError(f"{out} already exists; choose a new output file")
    preview_dir = Path(preview) if preview is not None else None
    if preview_dir is not None:
        preview_dir.mkdir(parents=True, exist_ok=True)
    with progress.stage("loading the face detector"):
        finder = tracked_faces(settings.detector, settings.batch_size)
    index, count = jax.process_index(), jax.process_count()
    record_file = out.with_name(f".{out.name}.progress-{index}-of-{count}")

    def work(element: int) -> dict[str, Any]:
        line = source[element]
        return _process_line(line.number, line.text, source, finder, settings.rate, settings.num_frames,
                             settings.redo, preview_dir)
    key = resume_key(source.path, finder, settings.rate, settings.num_frames, settings.redo)
    records = lines_in_rounds(len(source), work, record_file, key, stop,
                              bar=lambda done, total: progress.bar(total=total, initial=done, unit="line",
                                                                   desc=f"faces {source.path.name}"),
                              what=str(manifest))
    merged = write_merged(records, out, render=lambda r: r["text"] if "text" in r else json.dumps(
        r["entry"], ensure_ascii=False))
    record_file.unlink(missing_ok=True)
    done = merged if index == 0 else records
    result = {"out": str(out), **summary(done)}
    unreadable = [(r["status"].split("/", 1)[1], r["message"]) for r in done if r["status"].startswith("unreadable/")]
    failure = too_many_skipped(unreadable, result["clips"] + len(unreadable), settings.max_skip_fraction,
                               "faces.max_skip_fraction", what="clips")
    return {**result, "error": failure} if failure else result
