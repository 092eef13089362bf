"""Video for the vision tower: a clip → N frames sampled uniformly in time → SigLIP pixels,
and faces found in those frames when the manifest has no boxes.

Sampling. LLaVA-OneVision takes frame indices `np.linspace(0, total_frames - 1, N)` truncated to
integers. The timestamp form of that rule, which also holds for variable frame rates: N target
times evenly spaced from the first frame's presentation time to the last frame's, and for each
target the last frame shown at or before it. At a constant frame rate this picks exactly
LLaVA-OneVision's indices; a clip with fewer than N frames repeats frames (every output slot
still gets the frame on screen at its time), so the output always has N frames.

Decoding. One demux pass (packets only, no decoding) reads every video packet's timestamp and
keyframe flag: the exact timeline, whatever the header claims. Then, for each distinct frame
wanted, the decoder seeks to the last keyframe at or before it and decodes forward; targets in
the same group of pictures share one forward pass, so a clip with one keyframe is decoded once
up to its last wanted frame, never re-decoded. When a seek lands after the wanted frame (a
container whose index or keyframe flags lie), the clip is decoded sequentially from the start
instead; both paths choose frames by the same rule and give the same frames (tested).

Broken input raises `ExampleError`: missing_file, empty_file, no_video_stream (audio only),
corrupt_video (FFmpeg cannot open or demux the file, finds neither video nor audio in it, or no
frame decodes), truncated_video (the readable video
ends more than TRUNCATION_TOLERANCE_S before the duration in the header). A file cut short
therefore is skipped when its header survives to promise the missing part (an MP4 with its
index first, `movflags=faststart`); an MP4 cut at the tail with its index at the end (FFmpeg's
default) or at the head has no readable index and is corrupt_video (FFmpeg cannot tell it from
garbage); a container without a duration promise (e.g. MPEG-TS cut at the head) is what it
holds, sampled over what decodes. No FFmpeg exception leaves this module as anything else.

Preprocessing equals LLaVA-OneVision's: resize to 384×384 bicubic (no aspect preservation),
×1/255, mean = std = 0.5 (the llava-ov checkpoints' SigLIP settings).
"""
from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import av
import cv2
import numpy as np

from omni_jax.data.errors import ExampleError
from omni_jax.data.faces import Box, resize_bicubic

NUM_FRAMES = 8
SIGLIP_SIZE = 384
SIGLIP_MEAN = 0.5
SIGLIP_STD = 0.5
# Headers round durations and a container's duration can include a slightly longer audio track;
# half a second missing is more than that and still too little to change 8 sampled frames much.
TRUNCATION_TOLERANCE_S = 0.5
# Haar detection runs on a copy whose longer side is at most this: 12 ms a 480p frame, 21 at full
# size (cost grows with pixels); faces under ~24 px at this scale (1/13 of the longer side) are
# missed, too small to crop usefully anyway.
DETECT_MAX_SIDE = 320
HAAR_CASCADE = "haarcascade_frontalface_default.xml"


@dataclasses.dataclass(frozen=True)
class VideoFrames:
    frames: np.ndarray      # [frames, height, width, 3] uint8 RGB
    timestamps: np.ndarray  # [frames] float64: each frame's presentation time in seconds
    size: tuple[int, int]   # (width, height)


@dataclasses.dataclass(frozen=True)
class _Timeline:
    pts: np.ndarray        # [packets] int64 presentation times (stream time base), sorted
    keyframes: np.ndarray  # [keyframes] int64 presentation times of keyframes, sorted
    end: int               # where the readable video ends: last pts + its duration


def sample_pts(pts: np.ndarray, num_frames: int) -> np.ndarray:
    """pts: [frames] sorted presentation times → [num_frames] the times of the frames shown at
    num_frames evenly spaced times from the first frame to the last."""
    targets = np.linspace(pts[0], pts[-1], num_frames)
    # Half a tick of slack: a target that is a frame's own time must pick that frame despite
    # float rounding in linspace.
    return pts[np.searchsorted(pts, targets + 0.5, side="right") - 1]


def _timeline(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> _Timeline:
    """One demux pass over the video packets (no decoding)."""
    pts, keys, end = [], [], None
    try:
        for packet in container.demux(stream):
            time = packet.pts if packet.pts is not None else packet.dts
            if packet.size == 0 or time is None:
                continue
            pts.append(time)
            keys.append(packet.is_keyframe)
            end = max(end or time, time + (packet.duration or 0))
    except av.FFmpegError:
        pass  # the data stops mid-file: what was read is the readable video, judged against the header
    # Packets before the first keyframe (a stream cut at its head) cannot be decoded; a stream
    # without keyframe flags is decoded from its start.
    first = keys.index(True) if True in keys else 0
    pts, keys = np.array(pts[first:], np.int64), np.array(keys[first:], bool)
    return _Timeline(np.unique(pts), np.unique(pts[keys]), end or 0)


def _promised_seconds(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    """The video's duration according to the header (the stream's, else the container's)."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _decoded(container: av.container.InputContainer, stream: av.video.stream.VideoStream, start: int | None):
    """Frames in presentation order from the keyframe at or before `start` (None: from here)."""
    if start is not None:
        container.seek(int(start), stream=stream, backward=True, any_frame=False)
    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.InvalidDataError:
            continue  # one damaged packet: the decoder conceals it and goes on, as players do


def _decode_frames(
    path: Path, wanted: np.ndarray, keyframes: np.ndarray, seek: bool
) -> dict[int, av.VideoFrame] | None:
    """The frame shown at each time in `wanted` (sorted, unique), keyed by that time; None when
    seeking missed its keyframe (the caller then decodes without seeking)."""
    chosen = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, shown, ahead = None, None, None
        for time in wanted:
            key = keyframes[max(np.searchsorted(keyframes, time, side="right") - 1, 0)] if keyframes.size else time
            if frames is None or (seek and ahead is not None and key > ahead.pts):
                frames = _decoded(container, stream, key if seek else None)
                shown, ahead = None, next(frames, None)
                if seek and (ahead is None or ahead.pts > time):
                    return None
            while ahead is not None and ahead.pts <= time:
                shown, ahead = ahead, next(frames, None)
            # A decoder that drops the first frames leaves nothing at or before `time`: take the next one.
            frame = shown if shown is not None else ahead
            if frame is None:
                return None
            chosen[int(time)] = frame
    return chosen


def load_frames(path: str | os.PathLike, num_frames: int = NUM_FRAMES, seek: bool = True,
                rate: float | None = None) -> VideoFrames:
    """Decodes `num_frames` frames sampled uniformly in time (module docstring) from the first
    video stream of `path`. `seek=False` decodes sequentially (the reference the seeking path
    is tested against). `rate` (frames per second): also the frames shown every 1/rate s from
    the first, the distinct frames of both sets in time order (face tracks: `omni-jax faces`).
    Raises ExampleError (module docstring) naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ExampleError("missing_file", f"{path}: no such video file")
    if path.stat().st_size == 0:
        raise ExampleError("empty_file", f"{path}: the video file is empty (0 bytes)")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                streams = [s.type for s in container.streams]
                # Bytes without a header can match a text format's probe (a cut MP4 was read as
                # LRC lyrics): with no sound either, the file is damaged, not an audio clip.
                if not container.streams.audio:
                    raise ExampleError("corrupt_video", f"{path}: FFmpeg reads it as "
                                       f"{container.format.name!r} with streams {streams}, no video or audio")
                raise ExampleError("no_video_stream", f"{path}: no video stream (streams: {streams})")
            stream = container.streams.video[0]
            timeline = _timeline(container, stream)
            promised = _promised_seconds(container, stream)
            time_base = stream.time_base
        if not timeline.pts.size:
            raise ExampleError("corrupt_video", f"{path}: the video stream has no readable packets")
        readable = float((timeline.end - timeline.pts[0]) * time_base)
        if promised is not None and promised - readable > TRUNCATION_TOLERANCE_S:
            raise ExampleError("truncated_video", f"{path}: video ends after {readable:.2f} s of the "
                               f"{promised:.2f} s its header promises")
        wanted = sample_pts(timeline.pts, num_frames)
        if rate:
            ticks = np.arange(timeline.pts[0], timeline.pts[-1] + 0.5, 1 / (rate * float(time_base)))
            wanted = np.unique(np.concatenate([wanted, timeline.pts[np.searchsorted(timeline.pts, ticks + 0.5,
                                                                                    side="right") - 1]]))
        unique = np.unique(wanted)
        chosen = _decode_frames(path, unique, timeline.keyframes, seek=True) if seek else None
        if chosen is None:
            chosen = _decode_frames(path, unique, timeline.keyframes, seek=False)
        if chosen is None:
            raise ExampleError("corrupt_video", f"{path}: no frame of the video stream decodes")
        frames = {time: frame.to_ndarray(format="rgb24") for time, frame in chosen.items()}
    except av.FFmpegError as error:
        raise ExampleError("corrupt_video", f"{path}: {error}") from error
    pixels = np.stack([frames[int(time)] for time in wanted])
    timestamps = np.array([float(chosen[int(time)].pts * time_base) for time in wanted])
    return VideoFrames(pixels, timestamps, (pixels.shape[2], pixels.shape[1]))


def preprocess_frames(frames: np.ndarray, size: int = SIGLIP_SIZE) -> np.ndarray:
    """frames: [frames, height, width, 3] uint8 RGB → [frames, size, size, 3] float32, as
    LLaVA-OneVision's video processor: bicubic resize to size×size (PIL's, faces.resize_bicubic),
    ×1/255, (x − 0.5)/0.5."""
    resized = np.stack([resize_bicubic(frame, size) for frame in frames]).astype(np.float32)
    return (resized * np.float32(1 / 255) - np.float32(SIGLIP_MEAN)) / np.float32(SIGLIP_STD)


_CASCADES = threading.local()


def _cascade() -> cv2.CascadeClassifier:
    """This thread's classifier: a CascadeClassifier is not thread-safe (grain maps examples on
    a thread pool; one shared classifier raised vector range errors and double-frees)."""
    cascade = getattr(_CASCADES, "classifier", None)
    if cascade is None:
        cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, HAAR_CASCADE))
        if cascade.empty():
            raise RuntimeError(f"OpenCV's bundled {HAAR_CASCADE} did not load from {cv2.data.haarcascades}")
        _CASCADES.classifier = cascade
    return cascade


def detect_faces(frames: np.ndarray, max_side: int = DETECT_MAX_SIDE) -> list[Box | None]:
    """frames: [frames, height, width, 3] uint8 RGB → per frame the largest frontal face found by
    OpenCV's bundled Haar cascade as (x0, y0, x1, y1) pixels (x1/y1 exclusive), or None.

    Frames whose longer side exceeds `max_side` are searched at that size (area-averaged) and the
    boxes scaled back."""
    boxes = []
    for frame in frames:
        grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        scale = min(1.0, max_side / max(grey.shape))
        if scale < 1.0:
            grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        found = _cascade().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5)
        if len(found) == 0:
            boxes.append(None)
            continue
        x, y, w, h = max(found.tolist(), key=lambda b: b[2] * b[3])
        boxes.append(tuple(int(round(v / scale)) for v in (x, y, x + w, y + h)))
    return boxes
