"""What `omni-jax annotate` sends about a clip, decoded once: scene frames, the principal face's
crops, the sound.

One decode per clip: the frames every 1/face_rate s (`video.load_frames(rate=)`); the scene
frames are those nearest to every 1/frame_rate s among them (at most max_frames, evenly
spread), the face crops those of the principal face track (the manifest's timed boxes, else
RetinaFace and the tracker), at most max_faces, evenly spread. Images go out as JPEG data
URLs, the sound as 16 kHz mono 16-bit WAV.
"""
from __future__ import annotations

import base64
import dataclasses
import io
from typing import Any, Callable, Sequence

import cv2
import ml_collections
import numpy as np
import soundfile

from omni_jax.data import audio, video
from omni_jax.data.faces import MARGIN, expand_box, resize_bicubic
from omni_jax.data.manifest import Record
from omni_jax.data.pipeline import local_file

# frames [F, H, W, 3] uint8 and their times → per frame {"t", "box" or None, ...} (TrackedFaces.faces_by_time)
FacesByTime = Callable[[np.ndarray, Sequence[float]], list[dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class ClipMedia:
    scene: list[bytes]  # JPEG scene frames, in time order
    faces: list[bytes]  # JPEG face crops of the principal face, in time order (none: no face found)
    face_boxes: list[dict[str, Any]]  # the face track by time: {"t", "box"} per decoded frame
    sound: bytes | None  # WAV, 16 kHz mono; None without an audio track
    seconds: float  # the video's length as decoded


def evenly(items: Sequence[Any], most: int) -> list[Any]:
    """At most `most` of `items`, evenly spread, first and last kept."""
    if len(items) <= most:
        return list(items)
    return [items[int(i)] for i in np.round(np.linspace(0, len(items) - 1, most))]


def jpeg(image: np.ndarray, quality: int) -> bytes:
    """[H, W, 3] uint8 RGB → JPEG bytes."""
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok, "OpenCV could not encode a frame as JPEG"
    return data.tobytes()


def data_url(data: bytes, kind: str = "image/jpeg") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def fit(image: np.ndarray, side: int) -> np.ndarray:
    """`image` shrunk (never enlarged) so that its longer side is at most `side`."""
    height, width = image.shape[:2]
    scale = side / max(height, width)
    if scale >= 1:
        return image
    return cv2.resize(
        image, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
    )


def wav(samples: np.ndarray, rate: int = audio.SAMPLE_RATE) -> bytes:
    """[samples] float32 → 16-bit PCM WAV bytes."""
    out = io.BytesIO()
    soundfile.write(out, samples, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def timed_boxes(record: Record, times: np.ndarray, tolerance: float) -> list[dict[str, Any]] | None:
    """The manifest's timed boxes nearest each of `times` within `tolerance` (else no face);
    None when the line gives no boxes by time (they are then found)."""
    if record.faces is None or record.face_times is None:
        return None
    given = np.asarray(record.face_times)
    nearest = [int(np.argmin(np.abs(given - t))) for t in times]
    return [{"t": float(t), "box": record.faces[i] if abs(given[i] - t) <= tolerance else None}
            for i, t in zip(nearest, times)]


def scene_times(times: np.ndarray, rate: float, most: int) -> list[int]:
    """Indices of `times` nearest to every 1/rate s from the first, at most `most` of them."""
    ticks = np.arange(times[0], times[-1] + 1e-6, 1 / rate)
    return evenly(sorted({int(np.argmin(np.abs(times - t))) for t in ticks}), most)


def clip_media(record: Record, media: ml_collections.ConfigDict, find: FacesByTime) -> ClipMedia:
    """Decodes `record`'s clip once (module docstring); raises ExampleError (video.load_frames,
    audio.decode_audio) for one that cannot be read."""
    with local_file(record.video) as path:
        clip = video.load_frames(path, 1, rate=media.face_rate)
        sound_path = None if record.audio is not None else path
        waveform = audio.decode_audio(sound_path) if sound_path is not None else None
    if record.audio is not None:
        with local_file(record.audio) as path:
            waveform = audio.decode_audio(path)
    frames, times = clip.frames, clip.timestamps
    track = timed_boxes(record, times, media.face_time_tolerance)
    if track is None:
        track = [{"t": f["t"], "box": f["box"]} for f in find(frames, list(times))]
    width, height = clip.size
    crops = []
    for i in evenly([i for i, f in enumerate(track) if f["box"] is not None], media.max_faces):
        box = expand_box(track[i]["box"], width, height, MARGIN)
        if box is not None:
            x0, y0, x1, y1 = box
            crops.append(jpeg(resize_bicubic(frames[i, y0:y1, x0:x1], media.face_size), media.jpeg_quality))
    scene = [jpeg(fit(frames[i], media.image_side), media.jpeg_quality)
             for i in scene_times(times, media.frame_rate, media.max_frames)]
    sound = None
    if waveform is not None and waveform.samples.size:
        sound = wav(waveform.samples[:int(media.max_audio_seconds * audio.SAMPLE_RATE)])
    return ClipMedia(scene, crops, track, sound, float(times[-1] - times[0]))
