"""Why the input pipeline skips an example: one exception type, one fixed vocabulary of reasons.

Every loader (manifest, video, audio, faces, text) raises `ExampleError(reason, message)` for
input it cannot use; the pipeline catches exactly this type, counts it under `reason`, logs the
message (which names the example's file) once, and goes on. Anything else is a bug and is
raised.
"""
from __future__ import annotations

from omni_jax.errors import InputError, RunStopped

REASONS = (
    "malformed_json",        # a manifest line that is not a JSON object with the required keys
    "missing_file",          # the video (or the manifest's audio file) does not exist
    "empty_file",            # zero bytes
    "corrupt_video",         # the container or its video stream cannot be decoded
    "truncated_video",       # decodes, but ends before the frames its header promises
    "no_video_stream",       # a container without video
    "unreadable_audio",      # the audio track or audio file cannot be decoded
    "bad_conversation",      # conversations missing, empty, or without the <video> placeholder
    "no_assistant_turn",     # nothing for the loss to count
    "too_long",              # the multimodal placeholders alone exceed the longest sequence length
    "modality_excluded",     # an audio-only example where the modalities asked for leave audio out
)


class TooManySkipsError(RunStopped):
    """More of the dataset is broken than `max_skip_fraction` allows."""


class ExampleError(InputError):
    """An example the pipeline skips. `reason` is one of REASONS; the message names the file."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; expected one of {REASONS}")
        super().__init__(message)
        self.reason = reason
