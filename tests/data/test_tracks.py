"""Face tracks: ByteTrack-style association through crossings, gaps, low scores and shot cuts;
the principal face by time (main person over bystanders, the other face where the main one is
gone, no box where no face is); shot cuts from colour histograms of synthetic frames."""
import json

import numpy as np
import pytest

from omni_jax.data.tracks import (
    CUT_THRESHOLD,
    FrameDetections,
    TrackerConfig,
    assign,
    histogram_distances,
    iou,
    predict,
    principal_faces,
    rank,
    shot_cuts,
    track,
)

DT = 0.25  # seconds between detected frames: detection at 4 fps


def square(x0: float, y0: float, side: float = 100) -> list[float]:
    return [x0, y0, x0 + side, y0 + side]


def frame(i: int, *faces: tuple[list[float], float], cut: bool = False) -> FrameDetections:
    """Detected frame i at i·DT with the given (box, score) faces."""
    boxes = np.array([box for box, _ in faces], np.float32).reshape(-1, 4)
    return FrameDetections(i * DT, boxes, np.array([score for _, score in faces], np.float32), cut)


def times(count: int) -> list[float]:
    return [i * DT for i in range(count)]


def ids(faces: list[dict]) -> list[int | None]:
    return [face.get("track") for face in faces]


def test_iou_and_assignment():
    a = np.array([square(0, 0), square(1000, 0)], np.float64)
    b = np.array([square(50, 0), square(0, 0, 0)], np.float64)
    np.testing.assert_allclose(iou(a, b), [[50 / 150, 0.0], [0.0, 0.0]])
    # Track 0 fits detection 0 best (0.9), track 1 only detection 0 (0.35): 0–0 is kept and track 1
    # left unmatched, not 0–1 (0.31) and 1–0 (0.35) forced to match two.
    overlap = np.array([[0.9, 0.31], [0.35, 0.0]])
    assert assign(overlap, 0.3) == [(0, 0)]
    assert assign(np.array([[0.29]]), 0.3) == [] and assign(np.zeros((0, 2)), 0.3) == []


def test_prediction_moves_centre_and_size_with_constant_velocity():
    # The centre moves 10 px right and the side grows 20 px a second; predicted 0.5 s on.
    boxes = [np.array(square(100, 100)), np.array([100, 95, 220, 215])]
    np.testing.assert_allclose(predict([0.0, 1.0], boxes, 1.5), [100, 92.5, 230, 222.5])
    np.testing.assert_allclose(predict([0.0], boxes[:1], 3.0), square(100, 100))


def test_crossing_faces_keep_their_ids():
    """A moves right and B left, 20 px a frame, B 8 px lower: at frame 6 B's box is where A's
    was at frame 5 (IoU 0.76, A's own box only 0.5), so matching against the last boxes would
    swap them; the constant-velocity prediction puts each exactly on its own detection."""
    a = [square(20 + 20 * i, 50, 60) for i in range(12)]
    b = [square(240 - 20 * i, 58, 60) for i in range(12)]
    assert iou(np.array([a[5]]), np.array([b[6]]))[0, 0] > iou(np.array([a[5]]), np.array([a[6]]))[0, 0]
    tracks = track([frame(i, (a[i], 0.9), (b[i], 0.9)) for i in range(12)])
    assert [k.id for k in tracks] == [0, 1]
    np.testing.assert_array_equal(tracks[0].boxes, np.array(a, np.float32))
    np.testing.assert_array_equal(tracks[1].boxes, np.array(b, np.float32))
    np.testing.assert_allclose(tracks[0].times, times(12))
    assert tracks[0].observed.all() and tracks[0].boxes.dtype == np.float32


def test_bystander_does_not_become_principal():
    """The main face (100², score 0.9) is there all 20 frames; a larger bystander (130², 0.95)
    for frames 8–11: rank 20·100²·0.9 = 180000 against 4·130²·0.95 = 64220."""
    main = [square(100 + (i % 3), 100) for i in range(20)]
    frames = [frame(i, (main[i], 0.9), *([(square(300, 80, 130), 0.95)] if 8 <= i < 12 else [])) for i in range(20)]
    tracks = track(frames)
    assert [len(k.times) for k in tracks] == [20, 4]
    assert rank(tracks[0]) == pytest.approx(180000, rel=1e-6) and rank(tracks[1]) == pytest.approx(64220, rel=1e-6)
    faces = principal_faces(tracks, times(20))
    assert ids(faces) == [0] * 20
    assert faces[9] == {"t": 9 * DT, "box": [100.0, 100.0, 200.0, 200.0], "score": 0.9, "track": 0}
    assert json.loads(json.dumps(faces)) == faces


def test_short_gap_is_interpolated():
    """Moving 10 px a frame, unseen at frames 5 and 6 (occluded): one track, the gap filled on
    the line between frames 4 and 7; the principal faces keep its id on both sides and give no
    box in the gap (no face was seen there)."""
    path = [square(50 + 10 * i, 80) for i in range(12)]
    tracks = track([frame(i, *([(path[i], 0.9)] if i not in (5, 6) else [])) for i in range(12)])
    assert len(tracks) == 1
    (face,) = tracks
    assert face.observed.tolist() == [True] * 5 + [False] * 2 + [True] * 5
    np.testing.assert_allclose(face.boxes, path)
    assert face.scores[5] == face.scores[6] == 0.0 and face.scores[4] == np.float32(0.9)
    faces = principal_faces(tracks, times(12))
    assert ids(faces) == [0] * 5 + [None] * 2 + [0] * 5
    assert faces[5] == {"t": 5 * DT, "box": None} and faces[4]["box"] == [90.0, 80.0, 190.0, 180.0]


@pytest.mark.parametrize("missing,count", [(3, 1), (4, 2)])
def test_gap_longer_than_max_gap_splits_the_track(missing, count):
    """A still face unseen for `missing` frames from frame 5: bridged up to max_gap (3)."""
    frames = [frame(i, *([(square(100, 100), 0.9)] if not 5 <= i < 5 + missing else [])) for i in range(14)]
    tracks = track(frames, TrackerConfig(max_gap=3))
    assert len(tracks) == count
    if count == 2:
        np.testing.assert_allclose(tracks[0].times, times(5))
        np.testing.assert_allclose(tracks[1].times, times(14)[9:])
        assert tracks[0].observed.all() and tracks[1].observed.all()
        faces = principal_faces(tracks, times(14))
        assert ids(faces) == [0] * 5 + [None] * 4 + [1] * 5


def test_low_scores_continue_tracks_but_do_not_start_them():
    """Frames 0–2 at 0.9, 3–5 at 0.4 (second pass), 6–7 at 0.2 (under low_score: unseen),
    8–9 at 0.9; a second face at 0.4 throughout never becomes a track."""
    scores = [0.9] * 3 + [0.4] * 3 + [0.2] * 2 + [0.9] * 2
    frames = [frame(i, (square(100, 100), s), (square(400, 100), 0.4)) for i, s in enumerate(scores)]
    (face,) = track(frames)
    assert face.observed.tolist() == [True] * 6 + [False] * 2 + [True] * 2
    np.testing.assert_allclose(face.scores, [0.9] * 3 + [0.4] * 3 + [0.0] * 2 + [0.9] * 2, rtol=1e-6)
    np.testing.assert_array_equal(face.boxes[:, 0], [100] * 10)


def test_high_score_detection_is_matched_before_a_low_score_one():
    """Two boxes overlapping the track: the 0.9 one continues it in the first pass even though
    the 0.5 one fits the prediction better."""
    frames = [frame(0, (square(100, 100), 0.9)), frame(1, (square(100, 100), 0.5), (square(130, 100), 0.9))]
    (face,) = track(frames, TrackerConfig(min_hits=1))
    np.testing.assert_array_equal(face.boxes[:, 0], [100, 130])


def test_shot_cut_ends_tracks():
    """The same box before and after a cut at frame 5: two tracks."""
    frames = [frame(i, (square(100, 100), 0.9), cut=i == 5) for i in range(10)]
    tracks = track(frames)
    assert [k.id for k in tracks] == [0, 1]
    np.testing.assert_allclose(tracks[0].times, times(5))
    np.testing.assert_allclose(tracks[1].times, times(10)[5:])


def test_face_leaving_the_frame():
    """The main face (100²) in frames 0–11, another (60²) in 6–15, nobody in 16–19: the main
    face, then the other, then no box (beyond `tolerance` after the last detection)."""
    main = [(square(100, 100), 0.9)]
    other = [(square(300, 100, 60), 0.9)]
    frames = [frame(i, *(main if i < 12 else []), *(other if 6 <= i < 16 else [])) for i in range(20)]
    tracks = track(frames)
    faces = principal_faces(tracks, times(20))
    assert ids(faces) == [0] * 12 + [1] * 4 + [None] * 4
    assert faces[13]["box"] == [300.0, 100.0, 360.0, 160.0]
    assert faces[16] == {"t": 16 * DT, "box": None}
    last = 15 * DT
    assert ids(principal_faces(tracks, [last + 0.12, last + 0.14], tolerance=0.13)) == [1, None]
    assert principal_faces([], [0.0]) == [{"t": 0.0, "box": None}]


def test_spurious_detections_are_dropped_and_ids_renumbered():
    """A one-frame detection (created first) is dropped; the kept track takes id 0. A clip of
    one detected frame keeps its one-frame tracks."""
    face = (square(100, 100), 0.9)
    frames = [frame(0, (square(400, 100), 0.9), face), frame(1, face), frame(2, face)]
    (face,) = track(frames)
    assert face.id == 0 and face.boxes[0, 0] == 100
    assert [k.boxes[0, 0] for k in track(frames[:1])] == [400, 100]


def test_times_must_increase():
    with pytest.raises(ValueError, match="increasing times"):
        track([frame(1, (square(0, 0), 0.9)), frame(1, (square(0, 0), 0.9))])


H, W = 120, 160


def scene(top: tuple, bottom: tuple, seed: int, width: int = W) -> np.ndarray:
    """[H, width, 3] uint8: a vertical gradient from `top` to `bottom` with a skin-coloured
    ellipse (a face) and sensor noise."""
    y = np.linspace(0, 1, H)[:, None, None]
    image = np.broadcast_to((1 - y) * np.array(top) + y * np.array(bottom), (H, width, 3)).copy()
    yy, xx = np.mgrid[:H, :width]
    image[(yy - 50) ** 2 / 30 ** 2 + (xx - 80) ** 2 / 22 ** 2 < 1] = (220, 170, 140)
    image += np.random.default_rng(seed).normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def with_square(image: np.ndarray, x: int) -> np.ndarray:
    out = image.copy()
    out[40:80, x:x + 40] = (200, 40, 40)
    return out


def test_shot_cut_between_two_scenes():
    sky = scene((90, 140, 220), (60, 120, 50), seed=0)    # blue over green
    wall = scene((200, 80, 60), (70, 70, 70), seed=1)     # red over grey
    frames = np.stack([with_square(sky, 10), with_square(sky, 30), with_square(sky, 50), with_square(wall, 40),
                       with_square(wall, 60)])
    distances = histogram_distances(frames)
    assert distances[2] > 0.8 and np.delete(distances, 2).max() < 0.15
    assert shot_cuts(frames).tolist() == [False, False, False, True, False]


def test_motion_and_dimming_are_not_cuts():
    """A square moving, the light halved, new sensor noise; a camera pan across a wider scene."""
    base = scene((90, 140, 220), (60, 120, 50), seed=0)
    noisier = scene((90, 140, 220), (60, 120, 50), seed=3)
    still = np.stack([with_square(base, 10), with_square(base, 50), (with_square(base, 50) * 0.5).astype(np.uint8),
                      (with_square(noisier, 90) * 0.5).astype(np.uint8)])
    wide = scene((150, 90, 200), (40, 130, 90), seed=2, width=2 * W)
    pan = np.stack([wide[:, x:x + W] for x in range(0, W, 32)])
    for frames in (still, pan):
        np.testing.assert_array_less(histogram_distances(frames), CUT_THRESHOLD / 2)
        assert not shot_cuts(frames).any()
    assert shot_cuts(still[:0]).tolist() == [] and shot_cuts(still[:1]).tolist() == [False]
