"""Media files the tests write themselves (real codecs through omni_jax.data.media_writer, no downloads).

`write_clip` codes each frame's index into its pixels (`frame_code` / `read_code`: a grid of
black and white cells in the top half, robust to codec loss) and can draw a cartoon face in the
bottom half that OpenCV's Haar cascade detects; `write_corrupt`, `write_truncated` and
`write_empty` make the broken files the loaders must reject.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import cv2
import numpy as np

from omni_jax.data.media_writer import write_media

CODE_ROWS, CODE_COLS = 2, 5  # 10 bits: frame indices up to 1023


def tone(freq: float, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    """[channels, samples] float32 sine at 0.5 amplitude (each channel a slightly different phase)."""
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * freq * t + c) for c in range(channels)]).astype(np.float32)


def write_audio(path: Path, samples: np.ndarray, rate: int, codec: str = "aac") -> Path:
    """Encodes [channels, samples] float audio into `path` (container from the suffix)."""
    return write_media(path, audio=samples, rate=rate, audio_codec=codec)


def write_video(path: Path, seconds: float = 1.0, fps: int = 10, size: tuple[int, int] = (64, 48),
                audio: np.ndarray | None = None, audio_rate: int = 44100, codec: str = "mpeg4") -> Path:
    """A clip of a moving square (and, if given, an AAC audio track)."""
    width, height = size

    def frame(i: int) -> np.ndarray:
        image = np.zeros((height, width, 3), np.uint8)
        x = (i * 4) % max(1, width - 8)
        image[8:16, x:x + 8] = (255, 64, 32)
        return image

    return write_media(path, map(frame, range(int(seconds * fps))), audio, fps=fps, rate=audio_rate, codec=codec)


def frame_code(index: int, width: int, height: int) -> np.ndarray:
    """[height, width, 3] uint8: mid grey, with bit b of `index` as a black (0) or white (1) cell of
    a CODE_ROWS × CODE_COLS grid over the top half."""
    image = np.full((height, width, 3), 128, np.uint8)
    cell_h, cell_w = height // 2 // CODE_ROWS, width // CODE_COLS
    for bit in range(CODE_ROWS * CODE_COLS):
        r, c = divmod(bit, CODE_COLS)
        image[r * cell_h:(r + 1) * cell_h, c * cell_w:(c + 1) * cell_w] = 255 if index >> bit & 1 else 0
    return image


def read_code(image: np.ndarray) -> int:
    """The index `frame_code` wrote, read from the middle half of each cell (codecs blur edges)."""
    height, width = image.shape[:2]
    cell_h, cell_w = height // 2 // CODE_ROWS, width // CODE_COLS
    index = 0
    for bit in range(CODE_ROWS * CODE_COLS):
        r, c = divmod(bit, CODE_COLS)
        cell = image[r * cell_h + cell_h // 4:(r + 1) * cell_h - cell_h // 4,
                     c * cell_w + cell_w // 4:(c + 1) * cell_w - cell_w // 4]
        index |= int(cell.mean() > 128) << bit
    return index


def draw_face(image: np.ndarray, cx: int, cy: int, size: int) -> np.ndarray:
    """Draws a blurred cartoon face (skin oval, brows, eyes, nose, mouth) `size` pixels wide at
    (cx, cy) in place; OpenCV's frontal-face Haar cascade finds it from ~80 px up."""
    s = size / 200
    face = image.copy()
    cv2.ellipse(face, (cx, cy), (int(70 * s), int(92 * s)), 0, 0, 360, (225, 180, 150), -1)
    for dx in (-30, 30):
        x = cx + int(dx * s)
        cv2.ellipse(face, (x, cy - int(45 * s)), (int(22 * s), int(6 * s)), 0, 0, 360, (60, 40, 30), -1)
        cv2.ellipse(face, (x, cy - int(25 * s)), (int(16 * s), int(9 * s)), 0, 0, 360, (255, 255, 255), -1)
        cv2.circle(face, (x, cy - int(25 * s)), int(7 * s), (40, 30, 20), -1)
    cv2.ellipse(face, (cx, cy + int(10 * s)), (int(8 * s), int(18 * s)), 0, 0, 360, (200, 150, 120), -1)
    cv2.ellipse(face, (cx, cy + int(45 * s)), (int(28 * s), int(9 * s)), 0, 0, 360, (140, 60, 60), -1)
    image[:] = cv2.GaussianBlur(face, (0, 0), 2 * s)
    return image


def write_clip(path: Path, seconds: float = 1.0, fps: float | Fraction = 10, size: tuple[int, int] = (64, 48),
               codec: str = "h264", audio: bool = True, face: bool = False, gop: int = 12,
               times: Sequence[float] | None = None, faststart: bool = False, audio_codec: str = "aac",
               audio_seconds: float | None = None) -> Path:
    """A clip whose frame i shows `frame_code(i)` (and, with `face`, a face in the bottom half),
    with a 440 Hz tone track (`audio_codec`, 48 kHz for Opus, else 44.1 kHz) as long as the video
    or `audio_seconds` when `audio`; the container follows the suffix.

    `gop` is the keyframe interval; `times` (seconds, increasing) gives each frame its own
    timestamp for variable-frame-rate clips (then `seconds` and `fps` only set the count);
    `faststart` puts the MP4 index first (`movflags=faststart`).
    """
    width, height = size
    rate = Fraction(fps).limit_denominator(1001)
    count = len(times) if times is not None else int(seconds * rate)

    def frame(i: int) -> np.ndarray:
        image = frame_code(i, width, height)
        return draw_face(image, width // 2, height * 3 // 4, min(width, height // 2) - 8) if face else image

    audio_rate = 48000 if "opus" in audio_codec else 44100
    duration = audio_seconds or (times[-1] if times is not None else count / rate)
    codec = "libx264" if codec == "h264" else codec
    return write_media(path, map(frame, range(count)), tone(440.0, float(duration), audio_rate) if audio else None,
                       fps=rate, rate=audio_rate, codec=codec, audio_codec=audio_codec, gop=gop, times=times,
                       # keyframes every `gop` frames only, not where the frame code changes a lot
                       codec_options={"sc_threshold": "0"} if codec == "libx264" else None,
                       container_options={"movflags": "faststart"} if faststart else None)


def write_corrupt(path: Path, size: int = 4096, seed: int = 0, text: bytes = b"") -> Path:
    """Random bytes under a video suffix, or `text` repeated to `size` bytes."""
    data = (text * (size // len(text) + 1))[:size] if text else \
        np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    return path


def write_truncated(path: Path, src: Path, keep_fraction: float, where: str = "tail") -> Path:
    """`src` cut short: `where="tail"` keeps its first `keep_fraction` of bytes (a download or
    recording that stopped), `"head"` its last (a file missing its beginning)."""
    data = src.read_bytes()
    keep = int(len(data) * keep_fraction)
    path.write_bytes(data[:keep] if where == "tail" else data[len(data) - keep:])
    return path


def write_damaged_packets(path: Path, src: Path, packets: Sequence[int], seed: int = 0, kind: str = "audio") -> Path:
    """`src`'s first `kind` ("audio" or "video") stream remuxed with the payload of its packets
    numbered `packets` replaced by random bytes of the same size (timestamps kept)."""
    rng = np.random.default_rng(seed)
    with av.open(str(src)) as source, av.open(str(path), "w") as target:
        stream = getattr(source.streams, kind)[0]
        out = target.add_stream_from_template(stream)
        for number, packet in enumerate(p for p in source.demux(stream) if p.size):
            if number in packets:
                damaged = av.Packet(rng.integers(0, 256, packet.size, dtype=np.uint8).tobytes())
                damaged.pts, damaged.dts, damaged.time_base = packet.pts, packet.dts, packet.time_base
                packet = damaged
            packet.stream = out
            target.mux(packet)
    return path


def write_silent_track(path: Path, rate: int = 16000) -> Path:
    """A WAV file whose audio stream holds no samples (a header only; MP4 would drop the track)."""
    with av.open(str(path), "w") as container:
        container.add_stream("pcm_s16le", rate=rate, layout="mono")
        container.start_encoding()
    return path


def write_empty(path: Path) -> Path:
    """A zero-byte file."""
    path.write_bytes(b"")
    return path
