"""Writes media files with PyAV: video frames and an audio track, either or both, into one container.

    write_media(path, frames, audio, fps=10, rate=16000)      # a clip (H.264 + AAC)
    write_media(path, audio=samples, rate=16000)               # audio only

The synthetic data (`synth.clips`), the benchmarks and the tests' media files all come from here.
"""
from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import av
import numpy as np

LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}  # by channel count


def write_media(path: Path, frames: Iterable[np.ndarray] | None = None, audio: np.ndarray | None = None, *,
                fps: float | Fraction = 10, rate: int = 16000, codec: str = "libx264", audio_codec: str = "aac",
                gop: int = 12, times: Sequence[float] | None = None, codec_options: dict[str, str] | None = None,
                format: str | None = None, container_options: dict[str, str] | None = None) -> Path:
    """Encodes `frames` ([height, width, 3] uint8 RGB, all one size) as a `codec` stream at `fps`
    with a keyframe at most every `gop` frames, and `audio` ([channels, samples] or [samples]
    mono, float in [-1, 1], at `rate` Hz) as an `audio_codec` track, into `path`; returns `path`.

    `times` (seconds, increasing, one per frame) gives each frame its own timestamp (variable
    frame rate); `codec_options` go to the video encoder, `container_options` to the muxer
    (e.g. movflags=faststart); `format` names the container (default: from the suffix).
    """
    with av.open(str(path), "w", format=format, options=container_options or {}) as container:
        video = sound = None
        if frames is not None:  # the first frame gives the stream its size
            frames = iter(frames)
            first = next(frames)
            frames = itertools.chain([first], frames)
            fps = Fraction(fps).limit_denominator(1001)
            time_base = Fraction(1, 1000) if times is not None else 1 / fps
            video = container.add_stream(codec, rate=fps)
            video.height, video.width = first.shape[:2]
            # x264 refuses 4:2:0 at odd sizes (chroma planes of half a pixel); MPEG-4 pads them.
            video.pix_fmt = "yuv444p" if codec == "libx264" and (video.height % 2 or video.width % 2) else "yuv420p"
            video.codec_context.gop_size = gop
            video.codec_context.options = codec_options or {}
            video.codec_context.time_base = video.time_base = time_base
        if audio is not None:
            audio = np.atleast_2d(audio)
            sound = container.add_stream(audio_codec, rate=rate, layout=LAYOUTS[audio.shape[0]])
        if video is not None:
            for i, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = i if times is None else round(times[i] * 1000)
                frame.time_base = time_base  # not the stream's: the muxer may change that
                container.mux(video.encode(frame))
            container.mux(video.encode(None))
        if sound is not None:
            _encode_audio(container, sound, audio)
    return path


def _encode_audio(container: av.container.OutputContainer, stream: av.AudioStream, samples: np.ndarray) -> None:
    """Encodes [channels, samples] float audio into `stream`, one encoder frame at a time."""
    fmt = stream.codec_context.codec.audio_formats[0].name
    size = stream.codec_context.frame_size or 1024
    for start in range(0, samples.shape[1], size):
        chunk = samples[:, start:start + size]
        data = (np.clip(chunk, -1, 1) * 32767).astype(np.int16) if fmt.startswith("s16") else chunk.astype(np.float32)
        data = data if fmt.endswith("p") else data.T.reshape(1, -1)  # packed formats interleave the channels
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=stream.layout.name)
        frame.sample_rate, frame.pts, frame.time_base = stream.rate, start, Fraction(1, stream.rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))

