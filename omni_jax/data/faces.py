"""Face crops for the face encoder: FaceXFormer's recipe applied to per-frame boxes.

A box [x0, y0, x1, y1] in pixels (MTCNN's convention, which FaceXFormer's demo uses) is enlarged
by `margin` of its width and height (half on each side; FaceXFormer's `adjust_bbox`, 50 %),
clamped to the frame, truncated to whole pixels (the demo crops PIL images at `int()` corners),
cropped, resized to 224×224 bicubic, scaled to [0, 1] and normalised with ImageNet mean/std.

Resizing: the demo's torchvision `Resize(BICUBIC)` on a PIL image is PIL's bicubic (a = −0.5,
the kernel widened by the scale when shrinking, so it antialiases), horizontal pass first, each
pass rounded and clipped to 8 bits. It is reimplemented in NumPy (PIL is not a runtime dependency, and
OpenCV's bicubic neither antialiases nor uses a = −0.5) with one static sparse resampling matrix
per axis and the same pass order and rounding; it equals PIL's `Image.resize(BICUBIC)` but for
1 grey level on ~0.003 % of the pixels (float against PIL's fixed-point weights). It
equals torch `interpolate(mode="bicubic", antialias=True, align_corners=False)` on uint8 images
(written to match PIL) up to 2 grey levels on < 1 % of the pixels of white noise — PIL and torch
use fixed-point weights, this float ones; the weights themselves match torch's to float precision.

Missing boxes: a frame whose box is None (or lies outside the frame) takes the box of the
nearest frame that has one (the earlier on a tie); a clip without any box gets centre crops (the
largest centred square) and is flagged (`FaceCrops.fallback`) so the data pipeline can count it.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np
import scipy.sparse

FACE_SIZE = 224
MARGIN = 0.5
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
BICUBIC_A = -0.5  # PIL's (and torch's antialiased) bicubic coefficient

Box = tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class FaceCrops:
    pixel_values: np.ndarray  # [frames, size, size, 3] float32, normalised: the face encoder's input
    boxes: np.ndarray         # [frames, 4] int32: the pixel rectangles cropped (x0, y0, x1, y1), x1/y1 exclusive
    borrowed: np.ndarray      # [frames] bool: the frame had no usable box and took its nearest neighbour's
    fallback: bool            # no frame had a box: centre crops


def expand_box(box: Sequence[float], width: int, height: int, margin: float = MARGIN) -> Box | None:
    """Enlarges `box` by `margin` of its size (half per side), clamps it to the frame and
    truncates it to whole pixels; None when nothing of it is inside the frame."""
    x0, y0, x1, y1 = (float(v) for v in box)
    dx, dy = (x1 - x0) * margin / 2, (y1 - y0) * margin / 2
    x0, y0 = int(max(0.0, x0 - dx)), int(max(0.0, y0 - dy))
    x1, y1 = int(min(float(width), x1 + dx)), int(min(float(height), y1 + dy))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def nearest_boxes(boxes: Sequence[Box | None]) -> tuple[list[Box], np.ndarray] | None:
    """Gives every frame without a box the nearest frame's box (the earlier on a tie).

    Returns (boxes, borrowed mask [frames]), or None when no frame has a box."""
    have = [i for i, box in enumerate(boxes) if box is not None]
    if not have:
        return None
    filled = [boxes[min(have, key=lambda j: (abs(j - i), j))] for i in range(len(boxes))]
    return filled, np.array([box is None for box in boxes])


def centre_box(width: int, height: int) -> Box:
    """The largest centred square."""
    side = min(width, height)
    x0, y0 = (width - side) // 2, (height - side) // 2
    return x0, y0, x0 + side, y0 + side


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] weights of PIL's bicubic resampling (torch's antialiased bicubic):
    output pixel i is centred at (i + 0.5)·scale in the input, and the kernel spans
    ±2·max(scale, 1) input pixels, so shrinking averages like a low-pass filter."""
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    centre = (np.arange(out_size) + 0.5) * scale
    lo = np.maximum(np.floor(centre - 2.0 * stretch + 0.5), 0)
    hi = np.minimum(np.floor(centre + 2.0 * stretch + 0.5), in_size)
    index = np.arange(in_size)[None, :]
    x = np.abs((index - centre[:, None] + 0.5) / stretch)
    a = BICUBIC_A
    kernel = np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                      np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))
    kernel = np.where((index >= lo[:, None]) & (index < hi[:, None]), kernel, 0.0)
    return kernel / kernel.sum(axis=1, keepdims=True)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=32)
def _sparse_bicubic(in_size: int, out_size: int) -> scipy.sparse.csr_matrix:
    """bicubic_matrix as float32 CSR: ~4·max(scale, 1) taps per row, so a pass costs what the
    kernel touches rather than in_size × out_size (a 480p frame to 384²: ~2 ms, dense 30 ms).
    Cached: every frame of a clip, and every clip of a dataset mostly, has the same size."""
    return scipy.sparse.csr_matrix(bicubic_matrix(in_size, out_size).astype(np.float32))


def resize_bicubic(image: np.ndarray, size: int) -> np.ndarray:
    """image: [height, width, channels] uint8 → [size, size, channels] uint8, as PIL: the
    horizontal pass, rounded to 8 bits, then the vertical pass. Each pass is one sparse product
    with the resized axis leading; float32 sums of ≤ 255-valued taps round as float64 ones but
    for ties closer than ~1e-5 (counted in the tests against PIL)."""
    height, width, channels = image.shape
    columns = image.transpose(1, 0, 2).reshape(width, height * channels).astype(np.float32)
    wide = _to_uint8(_sparse_bicubic(width, size) @ columns)  # [size (x), height·channels]
    rows = wide.reshape(size, height, channels).transpose(1, 0, 2).reshape(height, size * channels)
    return _to_uint8(_sparse_bicubic(height, size) @ rows.astype(np.float32)).reshape(size, size, channels)


def crop_face(frame: np.ndarray, box: Box, size: int = FACE_SIZE) -> np.ndarray:
    """frame: [height, width, 3] uint8; box: in-frame pixel rectangle → [size, size, 3] float32,
    ImageNet-normalised."""
    x0, y0, x1, y1 = box
    face = resize_bicubic(frame[y0:y1, x0:x1], size).astype(np.float32) / 255.0
    return (face - IMAGENET_MEAN) / IMAGENET_STD


def face_crops(frames: np.ndarray, boxes: Sequence[Sequence[float] | None] | None, size: int = FACE_SIZE,
               margin: float = MARGIN) -> FaceCrops:
    """frames: [frames, height, width, 3] uint8 (RGB); boxes: one [x0, y0, x1, y1] or None per
    frame (or None for a clip without detections). Returns the crops and how they were chosen."""
    count, height, width = frames.shape[:3]
    boxes = list(boxes) if boxes is not None else [None] * count
    if len(boxes) != count:
        raise ValueError(f"{len(boxes)} boxes for {count} frames")
    expanded = [expand_box(b, width, height, margin) if b is not None else None for b in boxes]
    filled = nearest_boxes(expanded)
    if filled is None:
        chosen, borrowed = [centre_box(width, height)] * count, np.zeros(count, bool)
    else:
        chosen, borrowed = filled
    pixels = np.stack([crop_face(frame, box, size) for frame, box in zip(frames, chosen)])
    return FaceCrops(pixels, np.array(chosen, np.int32).reshape(count, 4), borrowed, filled is None)
