"""The face scenes (omni_jax.testing.face_scenes): every clip decodes as written, and its ground truth
is where the face is — measured on the decoded pixels against the photograph's face, with the
photograph's face box checked by an independent detector (OpenCV's Haar cascade)."""
import math

import cv2
import numpy as np
import pytest

from omni_jax.data import video
from omni_jax.testing import face_scenes

WIDTH, HEIGHT = face_scenes.SIZE
MATCH = 0.95  # NCC of a true box ≥ 0.99 (0.99 at 40 px); a box off by 10 % of its width scores ~0.76


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return {s.name: s for s in face_scenes.write_scenes(tmp_path_factory.mktemp("face_scenes"))}


def decode(scene) -> np.ndarray:
    """[frames, 720, 1280, 3] uint8: every frame of the clip (load_frames picks each one when asked
    for as many frames as were written at a constant rate)."""
    return video.load_frames(scene.path, len(scene.times)).frames


def crop(frame: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = (round(v) for v in box)
    return frame[y0:y1, x0:x1].astype(np.float32)


def face_match(frame: np.ndarray, box, mirror: bool = False) -> float:
    """Normalised cross-correlation of the frame inside `box` with the photograph's face (inside
    PHOTO_FACE_BOX, mirrored when `mirror`) resized to the box."""
    x0, y0, x1, y1 = map(int, face_scenes.PHOTO_FACE_BOX)
    face = face_scenes.photograph()[y0:y1, x0:x1]
    seen = crop(frame, box)
    reference = cv2.resize(face[:, ::-1] if mirror else face, seen.shape[1::-1], interpolation=cv2.INTER_AREA)
    a, b = seen - seen.mean(), reference.astype(np.float32) - reference.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


def test_every_scene_decodes_as_written(scenes):
    assert tuple(scenes) == face_scenes.SCENES
    for scene in scenes.values():
        count = round(face_scenes.SECONDS * face_scenes.FPS)
        clip = video.load_frames(scene.path, count)
        assert clip.frames.shape == (count, HEIGHT, WIDTH, 3) and clip.size == scene.size == (WIDTH, HEIGHT)
        np.testing.assert_allclose(scene.times, np.arange(count) / face_scenes.FPS)
        np.testing.assert_allclose(clip.timestamps, scene.times, atol=1e-6)
        assert len(scene.main) == len(scene.bystander) == count
        for box in filter(None, scene.main + scene.bystander):  # whole faces, inside the frame
            assert 0 <= box[0] < box[2] <= WIDTH and 0 <= box[1] < box[3] <= HEIGHT, (scene.name, box)


@pytest.mark.parametrize("name, frames", [("moving", (0, 15, 29)), ("far", (0, 29)), ("cut", (5, 20)),
                                          ("dim", (0, 29)), ("bystander", (0, 12)), ("occluded", (0, 29))])
def test_main_box_frames_the_photographs_face(scenes, name, frames):
    scene = scenes[name]
    decoded = decode(scene)
    for i in frames:
        assert face_match(decoded[i], scene.main[i]) > MATCH, (name, i)


def test_boxes_follow_size_and_place(scenes):
    heights = lambda name: [b[3] - b[1] for b in scenes[name].main]
    assert heights("moving")[0] == pytest.approx(120) and heights("moving")[-1] == pytest.approx(260)
    assert np.all(np.diff(heights("moving")) >= 0)
    assert heights("far") == pytest.approx([40] * 30)
    centres = np.array([(b[0] + b[2]) / 2 for b in scenes["moving"].main])
    assert np.all(np.diff(centres) >= 0) and centres[-1] - centres[0] == pytest.approx(640)  # across the frame


def test_bystander_is_a_second_mirrored_face_for_a_third_of_the_clip(scenes):
    scene = scenes["bystander"]
    both = [i for i, b in enumerate(scene.bystander) if b is not None]
    assert both == list(face_scenes.BYSTANDER_FRAMES) and len(both) == len(scene.times) // 3
    assert all(box is not None for box in scene.main)
    assert scene.bystander[both[0]][3] - scene.bystander[both[0]][1] == pytest.approx(120)
    decoded = decode(scene)
    assert face_match(decoded[both[0]], scene.bystander[both[0]], mirror=True) > MATCH
    assert face_match(decoded[both[0] - 1], scene.bystander[both[0]], mirror=True) < 0.5  # not there yet
    assert face_scenes.iou(scene.main[both[0]], scene.bystander[both[0]]) == 0


def test_occluded_frames_have_no_main_face(scenes):
    scene = scenes["occluded"]
    hidden = [i for i, b in enumerate(scene.main) if b is None]
    assert hidden == list(face_scenes.OCCLUDED_FRAMES) and len(hidden) / face_scenes.FPS == pytest.approx(0.3)
    decoded, box = decode(scene), scene.main[hidden[0] - 1]
    for i in hidden:  # the bar is there: the face box is mostly one dark colour
        covered = crop(decoded[i], box)
        assert face_match(decoded[i], box) < 0.7
        assert np.mean(np.abs(covered - face_scenes.OCCLUDER_COLOUR).max(-1) < 12) > 0.7


def test_empty_has_no_face(scenes):
    scene = scenes["empty"]
    assert scene.main == [None] * len(scene.times) and scene.bystander == [None] * len(scene.times)
    assert all(b is None for s in scenes.values() if s.name != "bystander" for b in s.bystander)


def test_cut_changes_the_picture_at_the_cut(scenes):
    decoded = decode(scenes["cut"])
    change = np.array([cv2.absdiff(a, b).mean() for a, b in zip(decoded, decoded[1:])])  # [i]: frame i → i + 1
    cut = face_scenes.CUT_FRAME - 1
    assert change[cut] > 20 and change[cut] > 10 * np.delete(change, cut).max()
    main = scenes["cut"].main
    assert face_scenes.iou(main[cut], main[cut + 1]) == 0


def test_dim_darkens_to_a_third(scenes):
    scene = scenes["dim"]
    decoded = decode(scene)
    first, last = crop(decoded[0], scene.main[0]).mean(), crop(decoded[-1], scene.main[-1]).mean()
    assert 0.25 < last / first < 0.35


def test_turned_boxes_rotate_the_face_ellipse(scenes):
    x0, y0, x1, y1 = face_scenes.PHOTO_FACE_BOX
    sideways = face_scenes.face_box(face_scenes.placement(221, (300, 200), angle=90))
    assert sideways == pytest.approx([300 - 110.5, 200 - 88, 300 + 110.5, 200 + 88])  # width and height swap
    boxes = np.array(scenes["turned"].main)
    sizes = boxes[:, 2:] - boxes[:, :2]
    # −30°, narrowed to 80 %: half-sizes hypot(0.8·a·cos 30°, b·sin 30°), hypot(0.8·a·sin 30°, b·cos 30°)
    scale, a, b, cos, sin = 230 / (y1 - y0), (x1 - x0) / 2, (y1 - y0) / 2, math.cos(math.pi / 6), 0.5
    assert sizes[0] == pytest.approx(2 * scale * np.array([math.hypot(0.8 * a * cos, b * sin),
                                                           math.hypot(0.8 * a * sin, b * cos)]))
    np.testing.assert_allclose(sizes, sizes[::-1])  # ±angle: the same box size
    np.testing.assert_allclose((boxes[:, :2] + boxes[:, 2:]) / 2, [[640, 370]] * len(boxes))


def test_photo_face_box_agrees_with_haar():
    grey = cv2.cvtColor(face_scenes.photograph(), cv2.COLOR_RGB2GRAY)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + video.HAAR_CASCADE)
    found = [[x, y, x + w, y + h] for x, y, w, h in cascade.detectMultiScale(grey, 1.1, 5)]
    assert max(face_scenes.iou(box, face_scenes.PHOTO_FACE_BOX) for box in found) >= 0.5
    assert face_scenes.photograph().shape == (600, 512, 3)


def test_ground_truth_at_takes_the_frame_on_screen(scenes):
    scene = scenes["bystander"]
    first = face_scenes.BYSTANDER_FRAMES[0]
    at = lambda t: face_scenes.ground_truth_at(scene, t)
    assert at(first / face_scenes.FPS) == (scene.main[first], scene.bystander[first])
    assert at((first - 0.01) / face_scenes.FPS) == (scene.main[first - 1], None)
    assert at(-1.0)[0] == scene.main[0] and at(100.0)[0] == scene.main[-1]


def test_iou():
    assert face_scenes.iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1
    assert face_scenes.iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3)
    assert face_scenes.iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0
    assert face_scenes.iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0


def test_deterministic(tmp_path, scenes):
    again = face_scenes.write_scene("far", tmp_path)
    assert again.path.read_bytes() == scenes["far"].path.read_bytes() and again.main == scenes["far"].main
