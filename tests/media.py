"""Media files the tests write themselves with PyAV (real codecs, no downloads).

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

CODE_ROWS, CODE_COLS = 2, 5  # 10 bits: frame indices up to 1023


def tone(freq: float, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    """[channels, samples] float32 sine at 0.5 amplitude (each channel a slightly different phase)."""
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * freq * t + c) for c in range(channels)]).astype(np.float32)


def write_audio(path: Path, samples: np.ndarray, rate: int, codec: str = "aac") -> Path:
    """Encodes [channels, samples] float audio into `path` (container from the suffix)."""
    layout = {1: "mono", 2: "stereo", 6: "5.1"}[samples.shape[0]]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        fmt = "s16" if codec.startswith("pcm_s16") else stream.codec_context.codec.audio_formats[0].name
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, samples.shape[1], frame_size):
            _encode_audio(container, stream, samples[:, start:start + frame_size], rate, layout, fmt, start)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def _encode_audio(container, stream, chunk, rate, layout, fmt, pts):
    planar = fmt.endswith("p")
    if fmt.startswith("s16"):
        data = (np.clip(chunk, -1, 1) * 32767).astype(np.int16)
    else:
        data = chunk.astype(np.float32)
    data = data if planar else data.T.reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
    frame.sample_rate, frame.pts, frame.time_base = rate, pts, Fraction(1, rate)
    for packet in stream.encode(frame):
        container.mux(packet)


def write_video(path: Path, seconds: float = 1.0, fps: int = 10, size: tuple[int, int] = (64, 48),
                audio: np.ndarray | None = None, audio_rate: int = 44100, codec: str = "mpeg4") -> Path:
    """A clip of a moving square (and, if given, an AAC audio track)."""
    width, height = size
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        layout = None if audio is None else {1: "mono", 2: "stereo"}[audio.shape[0]]
        sound = container.add_stream("aac", rate=audio_rate, layout=layout) if audio is not None else None
        for i in range(int(seconds * fps)):
            image = np.zeros((height, width, 3), np.uint8)
            x = (i * 4) % max(1, width - 8)
            image[8:16, x:x + 8] = (255, 64, 32)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if sound is not None:
            _mux_audio(container, sound, audio)
    return path


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
    time_base = Fraction(1, 1000) if times is not None else 1 / rate
    codec = "libx264" if codec == "h264" else codec
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        video = container.add_stream(codec, rate=rate)
        # x264 refuses 4:2:0 at odd sizes (chroma planes of half a pixel); MPEG-4 pads them.
        odd = width % 2 or height % 2
        video.width, video.height = width, height
        video.pix_fmt = "yuv444p" if codec == "libx264" and odd else "yuv420p"
        video.codec_context.gop_size = gop
        if codec == "libx264":  # keyframes every `gop` frames only, not where the frame code changes a lot
            video.codec_context.options = {"sc_threshold": "0"}
        video.codec_context.time_base = time_base
        video.time_base = time_base
        audio_rate = 48000 if "opus" in audio_codec else 44100
        sound = container.add_stream(audio_codec, rate=audio_rate, layout="mono") if audio else None
        for i in range(count):
            image = frame_code(i, width, height)
            if face:
                draw_face(image, width // 2, height * 3 // 4, min(width, height // 2) - 8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = round(times[i] * 1000) if times is not None else i
            frame.time_base = time_base
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if sound is not None:
            duration = audio_seconds or (times[-1] if times is not None else count / rate)
            _mux_audio(container, sound, tone(440.0, float(duration), audio_rate))
    return path


def _mux_audio(container, stream, samples: np.ndarray) -> None:
    """Encodes [channels, samples] float audio into `stream`."""
    fmt = stream.codec_context.codec.audio_formats[0].name
    frame_size = stream.codec_context.frame_size or 1024
    for start in range(0, samples.shape[1], frame_size):
        _encode_audio(container, stream, samples[:, start:start + frame_size], stream.rate, stream.layout.name, fmt,
                      start)
    for packet in stream.encode(None):
        container.mux(packet)


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
