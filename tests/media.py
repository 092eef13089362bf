"""Media files the tests write themselves with PyAV (real codecs, no downloads)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def tone(freq: float, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    """[channels, samples] float32 sine at 0.5 amplitude (each channel a slightly different phase)."""
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * freq * t + c) for c in range(channels)]).astype(np.float32)


def write_audio(path: Path, samples: np.ndarray, rate: int, codec: str = "aac") -> Path:
    """Encodes [channels, samples] float audio into `path` (container from the suffix)."""
    layout = {1: "mono", 2: "stereo"}[samples.shape[0]]
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
        audio_stream = None
        if audio is not None:
            layout = {1: "mono", 2: "stereo"}[audio.shape[0]]
            audio_stream = container.add_stream("aac", rate=audio_rate, layout=layout)
        for i in range(int(seconds * fps)):
            image = np.zeros((height, width, 3), np.uint8)
            x = (i * 4) % max(1, width - 8)
            image[8:16, x:x + 8] = (255, 64, 32)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if audio_stream is not None:
            fmt = audio_stream.codec_context.codec.audio_formats[0].name
            frame_size = audio_stream.codec_context.frame_size or 1024
            for start in range(0, audio.shape[1], frame_size):
                _encode_audio(container, audio_stream, audio[:, start:start + frame_size], audio_rate,
                              audio_stream.layout.name, fmt, start)
            for packet in audio_stream.encode(None):
                container.mux(packet)
    return path
