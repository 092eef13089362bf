"""RetinaFace against its PyTorch release (random weights, both backbones, odd input sizes, the
release's own PriorBox and decoding), through the real converter (.pth with BatchNorm, with and
without DataParallel's prefix); the static-shape NMS against OpenCV's."""
import cv2
import jax
import ml_collections
import numpy as np
import pytest
import torch

from omni_jax.checkpoint_dir import read_config
from omni_jax.conversion import ConversionError
from omni_jax.conversion.retinaface import backbone_of, bundled_params, convert_retinaface
from omni_jax.errors import CheckpointRefused
from omni_jax.models import retinaface
from omni_jax.pretrained import load_pretrained
from omni_jax.testing.reference import retinaface as reference
from tests.conftest import RTOL, rel_err


@pytest.fixture(scope="module", params=["mobilenet0.25", "resnet50"])
def release(request, tmp_path_factory):
    """(torch model, its converted checkpoint) for a random-weight release file of each backbone."""
    torch_model = reference.randomize(reference.RetinaFace(request.param), seed=1)
    path = tmp_path_factory.mktemp(request.param) / "Final.pth"
    torch.save(torch_model.state_dict(), path)
    return torch_model, convert_retinaface(path, path.parent / "converted")


def _reference_outputs(torch_model, images):
    with torch.no_grad():
        return [t.numpy() for t in torch_model(torch.from_numpy(images).permute(0, 3, 1, 2))]


@pytest.mark.parametrize("size", [(97, 131)])  # odd: padding and the FPN's upsampling to the lateral's size
def test_outputs_equal_the_release(release, size):
    torch_model, converted = release
    model, params = load_pretrained(converted)
    images = np.random.default_rng(0).uniform(-128, 128, (2, *size, 3)).astype(np.float32)  # pixels minus the mean
    ours = model.apply({"params": params}, images)
    for name, ref in zip(("loc", "conf", "landmarks"), _reference_outputs(torch_model, images)):
        assert ours[name].shape == ref.shape
        assert rel_err(ours[name], ref) < RTOL, name


def test_decoded_boxes_and_landmarks_equal_the_release(release):
    torch_model, converted = release
    model, params = load_pretrained(converted)
    height, width = 97, 131
    images = np.random.default_rng(1).uniform(-128, 128, (1, height, width, 3)).astype(np.float32)
    loc, _, landmarks = _reference_outputs(torch_model, images)
    priors = reference.prior_box(height, width)
    np.testing.assert_allclose(retinaface.prior_boxes(height, width, model.config), priors.numpy(), rtol=1e-6)
    scale = np.array([width, height] * 5, np.float32)
    ref_boxes = reference.decode(torch.from_numpy(loc[0]), priors).numpy() * scale[:4]
    ref_points = reference.decode_landmarks(torch.from_numpy(landmarks[0]), priors).numpy() * scale
    out = model.apply({"params": params}, images)
    boxes, points = retinaface.decode(out["loc"], out["landmarks"], retinaface.prior_boxes(height, width, model.config),
                                      height, width)
    assert rel_err(boxes[0], ref_boxes) < RTOL
    assert rel_err(np.asarray(points[0]).reshape(-1, 10), ref_points) < RTOL


def test_data_parallel_prefix_converts_to_the_same_parameters(release, tmp_path):
    torch_model, converted = release
    prefixed = tmp_path / "module.pth"
    torch.save({f"module.{k}": v for k, v in torch_model.state_dict().items()}, prefixed)
    again = convert_retinaface(prefixed, tmp_path / "again")
    assert read_config(again)["source_format"] == "retinaface_data_parallel"
    _, ours = load_pretrained(converted)
    _, theirs = load_pretrained(again)
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)


def test_missing_and_mis_shaped_tensors_are_all_named(release, tmp_path):
    torch_model, _ = release
    state = dict(torch_model.state_dict())
    del state["ssh2.conv3X3.0.weight"]
    state["fpn.merge1.0.weight"] = state["fpn.merge1.0.weight"][:, :-1]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ConversionError) as error:
        convert_retinaface(tmp_path / "broken.pth", tmp_path / "out")
    assert "missing key 'ssh2.conv3X3.0.weight'" in str(error.value)
    assert "shape mismatch for 'fpn.merge1.0.weight'" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_other_models_and_truncated_files_are_refused(tmp_path):
    torch.save({"encoder.layer.0.weight": torch.zeros(4, 4)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointRefused, match="not a RetinaFace checkpoint"):
        convert_retinaface(tmp_path / "other.pth", tmp_path / "out")
    model = reference.RetinaFace()
    torch.save(model.state_dict(), tmp_path / "whole.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:50_000])
    with pytest.raises(CheckpointRefused, match="not a readable PyTorch checkpoint"):
        convert_retinaface(tmp_path / "cut.pth", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_backbone_is_recognised_from_the_keys():
    assert backbone_of(["module.body.stage1.0.0.weight"]) == "mobilenet0.25"
    assert backbone_of(["body.layer1.0.conv1.weight"]) == "resnet50"


def test_nms_keeps_what_opencv_keeps():
    rng = np.random.default_rng(3)
    centres, sizes = rng.uniform(0, 200, (64, 2)), rng.uniform(10, 60, (64, 2))
    boxes = np.concatenate([centres, centres + sizes], axis=1).astype(np.float32)
    scores = np.sort(rng.uniform(0.2, 1.0, 64).astype(np.float32))[::-1]
    keep = np.asarray(retinaface.nms(boxes, scores, scores >= 0.3, 0.4))
    # OpenCV's NMSBoxes takes (x, y, w, h); its IoU counts areas as w·h like ours
    expected = cv2.dnn.NMSBoxes(np.concatenate([boxes[:, :2], sizes], axis=1).tolist(), scores.tolist(), 0.3, 0.4)
    assert sorted(np.flatnonzero(keep)) == sorted(np.asarray(expected).reshape(-1).tolist())
    assert 5 < keep.sum() < 60


def test_detections_are_padded_to_a_static_count():
    cfg, params = bundled_params()
    model = retinaface.RetinaFace(ml_collections.FrozenConfigDict(cfg))
    found = jax.jit(lambda images: retinaface.detections(model.apply({"params": params}, images), 64, 96, cfg,
                                                         score_threshold=0.0, max_faces=5))(np.zeros((3, 64, 96, 3)))
    assert found["boxes"].shape == (3, 5, 4) and found["landmarks"].shape == (3, 5, 5, 2)
    assert found["valid"].shape == (3, 5) and bool(found["valid"][:, 0].all())
    assert np.all(np.diff(np.asarray(found["scores"]), axis=1)[np.asarray(found["valid"][:, 1:])] <= 0)
