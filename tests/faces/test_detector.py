"""The bundled real weights: our detector (letterboxed, batched, on the device) against
onnxruntime running the same ONNX model with the release's decoding and OpenCV's NMS, on a real
photograph as it is, darkened, rotated, shrunk and placed in a larger frame; nothing in noise."""
import cv2
import jax
import matplotlib.cbook
import numpy as np
import onnxruntime
import pytest
import torch

from omni_jax.conversion.retinaface import bundled_weights, weights_file_bytes
from omni_jax.errors import CheckpointRefused
from omni_jax.faces.detector import FaceDetector, input_size, letterbox
from omni_jax.models.retinaface import BGR_MEAN
from omni_jax.testing.reference import retinaface as reference

SCORE = 0.5  # the faces compared: every one either side finds at this score


@pytest.fixture(scope="module")
def photo():
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(batch_size=2, score_threshold=SCORE)


def onnxruntime_faces(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes [n, 4], scores [n], landmarks [n, 5, 2]) by onnxruntime on the image as it is."""
    session = onnxruntime.InferenceSession(bundled_weights())
    height, width = image.shape[:2]
    inputs = (image[..., ::-1].astype(np.float32) - np.float32(BGR_MEAN)).transpose(2, 0, 1)[None]
    loc, conf, landmarks = session.run(None, {"input": np.ascontiguousarray(inputs)})
    priors = reference.prior_box(height, width)
    boxes = reference.decode(torch.from_numpy(loc[0]), priors).numpy() * np.array([width, height] * 2)
    points = reference.decode_landmarks(torch.from_numpy(landmarks[0]), priors).numpy() * np.array([width, height] * 5)
    scores = conf[0, :, 1]
    keep = np.asarray(cv2.dnn.NMSBoxes(np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist(),
                                       scores.tolist(), SCORE, 0.4), int).reshape(-1)
    keep = keep[np.argsort(-scores[keep])]
    return boxes[keep], scores[keep], points[keep].reshape(-1, 5, 2)


def rotated(image: np.ndarray, degrees: float) -> np.ndarray:
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)


def in_larger_frame(image: np.ndarray) -> np.ndarray:
    frame = np.full((720, 1280, 3), 40, np.uint8)
    frame[60:60 + image.shape[0], 700:700 + image.shape[1]] = image
    return frame


TRANSFORMS = {
    "as_is": lambda im: im,
    "darkened": lambda im: (im * 0.35).astype(np.uint8),
    "rotated_20": lambda im: rotated(im, 20),
    "rotated_-30": lambda im: rotated(im, -30),
    "shrunk": lambda im: cv2.resize(im, None, fx=0.3, fy=0.3, interpolation=cv2.INTER_AREA),
    "larger_frame": in_larger_frame,
}


@pytest.mark.parametrize("name", TRANSFORMS)
def test_faces_equal_onnxruntimes_within_a_pixel(photo, detector, name):
    image = TRANSFORMS[name](photo)
    ref_boxes, ref_scores, ref_points = onnxruntime_faces(image)
    (ours,) = detector(image[None])
    assert len(ref_boxes) >= 1 and len(ours.boxes) == len(ref_boxes)
    np.testing.assert_allclose(ours.boxes, ref_boxes, atol=1.0)
    np.testing.assert_allclose(ours.landmarks, ref_points, atol=1.0)
    np.testing.assert_allclose(ours.scores, ref_scores, atol=1e-3)


def test_the_photographs_face_is_where_it_is(photo, detector):
    (faces,) = detector(photo[None])
    assert len(faces.boxes) == 1 and faces.scores[0] > 0.99
    x0, y0, x1, y1 = faces.boxes[0]
    left_eye, right_eye = faces.landmarks[0][:2]
    assert x0 < left_eye[0] < right_eye[0] < x1 and y0 < left_eye[1] < y1  # eyes inside, in order


def test_nothing_in_noise(detector):
    noise = np.random.default_rng(0).integers(0, 256, (2, 480, 640, 3), dtype=np.uint8)
    assert all(len(f.boxes) == 0 for f in detector(noise))
    assert all(len(f.boxes) == 0 for f in detector(np.zeros((1, 360, 640, 3), np.uint8)))


def test_frames_compile_once_per_bucket():
    assert input_size(1280, 720) == (1.0, (1280, 768))
    assert input_size(640, 360) == (1.0, (640, 384))
    assert input_size(1920, 1080) == (2 / 3, (1280, 768))
    assert input_size(720, 1280) == (1.0, (768, 1280))
    frame = np.full((360, 640, 3), 7, np.uint8)
    canvas = letterbox(frame, 1.0, (640, 384))
    assert canvas.shape == (384, 640, 3) and (canvas[:360] == 7).all()
    assert (canvas[360:] == np.array(BGR_MEAN[::-1], np.uint8)).all()  # zeros at the network's input


def test_batches_over_eight_devices_equal_one_device(photo):
    frames = np.stack([photo, TRANSFORMS["darkened"](photo), TRANSFORMS["rotated_20"](photo)] * 3)
    split = FaceDetector(batch_size=8, devices=jax.devices())(frames)
    single = FaceDetector(batch_size=8, devices=jax.devices()[:1])(frames)
    assert len(jax.devices()) == 8
    for a, b in zip(split, single):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_a_truncated_weights_file_is_refused(tmp_path):
    import importlib.metadata

    from omni_jax.conversion.retinaface import BUNDLED_DISTRIBUTION, BUNDLED_FILE

    source = importlib.metadata.distribution(BUNDLED_DISTRIBUTION).locate_file(BUNDLED_FILE)
    cut = tmp_path / "weights.py"
    cut.write_bytes(source.read_bytes()[:100_000])
    with pytest.raises(CheckpointRefused, match="not the weights file"):
        weights_file_bytes(cut)
    damaged = tmp_path / "damaged.py"
    damaged.write_text(f"WEIGHTS = {bundled_weights()[:300_000]!r}\n")
    from omni_jax.conversion.retinaface import OnnxReader

    with pytest.raises(CheckpointRefused, match="not a readable ONNX model"):
        OnnxReader(weights_file_bytes(damaged), damaged)
