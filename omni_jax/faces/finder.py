"""Faces by time for a clip's frames: the detector on every frame, shot cuts, tracks, and at each
frame the principal face (`data.tracks`). One implementation for `omni-jax faces` (frames at a
rate over the whole clip) and for the input pipeline (a line without boxes: its sampled frames).

`finder_for(cfg.data.face_detector)` is what the pipeline is given (`data/` does not import
models), by the config's detector (configs/faces.py `face_detector`): kind "retinaface" with
`weights` "" (the bundled MobileNet-0.25) or a converted RetinaFace checkpoint's folder, or kind
"haar" (OpenCV's cascade on each frame, also the fallback where the bundled weights are not
installed).
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Sequence

import numpy as np

from omni_jax.conversion.retinaface import BUNDLED
from omni_jax.data import tracks
from omni_jax.data.faces import Box
from omni_jax.data.pipeline import FindFaces, haar_faces
from omni_jax.errors import InputError, MissingInputError
from omni_jax.faces.detector import FaceDetector, Faces, check_weights

log = logging.getLogger(__name__)

# The pipeline tracks a line's sampled frames only (8 over the clip: 0.4 s apart in a 3 s clip),
# where a small face moves by much of its width from one to the next (a 40-px face drifting
# 40 px/s overlaps its next box by IoU 0.2–0.35): matched from IoU 0.1.
SAMPLED_FRAMES_TRACKER = tracks.TrackerConfig(match_iou=0.1)
RETINAFACE = "retinaface"
HAAR = "haar"


def detections(frames: np.ndarray, times: Sequence[float], found: Sequence[Faces]) -> list[tracks.FrameDetections]:
    """The tracker's input: each frame's faces at its time, flagged where a shot cut precedes it."""
    cuts = tracks.shot_cuts(frames)
    return [tracks.FrameDetections(float(t), f.boxes, f.scores, bool(cut)) for t, f, cut in zip(times, found, cuts)]


class TrackedFaces:
    """`finder(frames, times)` → per frame the principal face's box or None (FindFaces);
    `finder.faces_by_time(frames, times)` → the manifest's timed entries. Picklable."""

    def __init__(self, detector: FaceDetector, tracker: tracks.TrackerConfig = tracks.TrackerConfig()):
        self.detector, self.tracker = detector, tracker

    def faces_by_time(self, frames: np.ndarray, times: Sequence[float],
                      found: Sequence[Faces] | None = None) -> list[dict[str, Any]]:
        """frames [F, H, W, 3] uint8 RGB at `times` (increasing seconds) → one
        {"t", "box", "score", "track"} (or {"t", "box": None}) per frame; `found`: the detector's
        output for these frames, when already computed."""
        found = self.detector(frames) if found is None else found
        tracked = tracks.track(detections(frames, times, found), self.tracker)
        return tracks.principal_faces(tracked, times)

    def __call__(self, frames: np.ndarray, times: np.ndarray) -> list[Box | None]:
        return [None if f["box"] is None else tuple(f["box"]) for f in self.faces_by_time(frames, list(times))]


KINDS = (RETINAFACE, HAAR)


def weights_for(detector: Any) -> str:
    """The RetinaFace weights a detector config names: its checkpoint folder, or BUNDLED."""
    if detector.kind not in KINDS:
        raise InputError(f"face detector kind {detector.kind!r}: expected one of {', '.join(KINDS)}")
    return detector.weights or BUNDLED


def tracked_faces(detector: Any, batch_size: int = 8) -> TrackedFaces:
    """RetinaFace + the tracker of a detector config (`omni-jax faces` and annotate track faces
    over whole clips), its weights loaded and checked now."""
    if detector.kind == HAAR:
        raise InputError("face detector kind 'haar': tracking faces over whole clips takes kind 'retinaface' (the "
                         "cascade is the training pipeline's cheap detector only)")
    finder = TrackedFaces(FaceDetector(weights_for(detector), batch_size))
    finder.detector.load()
    return finder


def finder_for(detector: Any) -> FindFaces:
    """The face finder of a detector config (module docstring)."""
    weights = weights_for(detector)
    return haar_faces if detector.kind == HAAR else _finder(weights)


@functools.cache
def _finder(weights: str) -> FindFaces:
    try:
        check_weights(weights)  # a wrong path or model is one line now, not an error in every worker
    except MissingInputError as error:
        if weights != BUNDLED:
            raise
        log.warning("the face detector: %s; faces are found with OpenCV's Haar cascade instead", error)
        return haar_faces
    # One device: in a multi-process run without data workers the pipeline detects beside the
    # train step, and a program over several devices then waited on the step's cross-process
    # collective while that step's other process waited on its data (a deadlock); on one device
    # the detection runs as soon as the step leaves the device.
    return TrackedFaces(FaceDetector(weights, device_count=1), SAMPLED_FRAMES_TRACKER)
