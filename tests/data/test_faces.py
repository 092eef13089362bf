"""Face crops: FaceXFormer's margin and clamping, nearest-frame fill, centre-crop fallback,
the PIL-style bicubic resize and ImageNet normalisation, on synthetic frames."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from omni_jax.data.faces import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    bicubic_matrix,
    centre_box,
    expand_box,
    face_crops,
    nearest_boxes,
    resize_bicubic,
)

HEIGHT, WIDTH = 240, 320


def frames(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, HEIGHT, WIDTH, 3), dtype=np.uint8)


@pytest.mark.parametrize("box,expected", [
    ((100, 60, 180, 140), (80, 40, 200, 160)),          # 80×80 → 120×120 about the same centre
    ((10, 20, 110, 220), (0, 0, 135, 240)),             # clamped at the left, top and bottom
    ((250.7, 30.2, 310.9, 90.6), (235, 15, 320, 105)),  # fractions truncate, as the demo's int() crop
    ((400, 10, 500, 100), None),                        # wholly outside the frame
])
def test_expand_box(box, expected):
    assert expand_box(box, WIDTH, HEIGHT) == expected


def test_margin_is_a_parameter():
    assert expand_box((100, 60, 180, 140), WIDTH, HEIGHT, margin=0.0) == (100, 60, 180, 140)
    assert expand_box((100, 60, 180, 140), WIDTH, HEIGHT, margin=1.0) == (60, 20, 220, 180)


def test_missing_frames_take_the_nearest_box():
    a, b = (1, 1, 5, 5), (2, 2, 6, 6)
    filled, borrowed = nearest_boxes([None, a, None, None, b, None])
    assert filled == [a, a, a, b, b, b]
    assert borrowed.tolist() == [True, False, True, True, False, True]
    assert nearest_boxes([a, None, b])[0] == [a, a, b]  # a tie goes to the earlier frame
    assert nearest_boxes([None, None]) is None


def test_face_crops_geometry_and_pixels():
    clip = frames(4)
    boxes = [(100, 60, 180, 140), None, (400, 10, 500, 100), (10, 20, 110, 220)]
    crops = face_crops(clip, boxes)
    assert crops.pixel_values.shape == (4, 224, 224, 3) and crops.pixel_values.dtype == np.float32
    # Frame 1 has no box and frame 2's is outside the frame: both take a neighbour's.
    assert crops.boxes.tolist() == [[80, 40, 200, 160], [80, 40, 200, 160], [0, 0, 135, 240], [0, 0, 135, 240]]
    assert crops.borrowed.tolist() == [False, True, True, False] and not crops.fallback
    x0, y0, x1, y1 = crops.boxes[3]
    expected = (resize_bicubic(clip[3, y0:y1, x0:x1], 224) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(crops.pixel_values[3], expected, atol=1e-6)


def test_crop_of_the_output_size_is_only_normalised():
    clip = frames(1, seed=1)
    crops = face_crops(clip, [(40, 8, 264, 232)], margin=0.0)
    expected = (clip[0, 8:232, 40:264] / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(crops.pixel_values[0], expected, atol=1e-6)


def test_clip_without_boxes_uses_centre_crops_and_is_flagged():
    for boxes in (None, [None, None, (400, 10, 500, 100)]):
        crops = face_crops(frames(3), boxes)
        assert crops.fallback and not crops.borrowed.any()
        assert crops.boxes.tolist() == [[40, 0, 280, 240]] * 3
    assert centre_box(100, 300) == (0, 100, 100, 200)


def test_box_count_must_match_the_frames():
    with pytest.raises(ValueError, match="2 boxes for 3 frames"):
        face_crops(frames(3), [None, None])


@pytest.mark.parametrize("size", [(300, 180), (100, 90), (57, 413), (224, 224)])
def test_bicubic_equals_torch_antialiased_bicubic(size):
    """torch's antialiased bicubic was written to match PIL (FaceXFormer's torchvision Resize on
    PIL images): same weights; on uint8 white noise, where the 8-bit rounding of the first pass
    matters most, at most 2 grey levels on < 1 % of the pixels (fixed- vs floating-point weights)."""
    h, w = size
    image = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    as_torch = torch.from_numpy(image).permute(2, 0, 1)[None]
    ref = F.interpolate(as_torch, size=(224, 224), mode="bicubic", antialias=True, align_corners=False)
    ref = ref[0].permute(1, 2, 0).numpy().astype(np.int32)
    diff = np.abs(resize_bicubic(image, 224).astype(np.int32) - ref)
    assert diff.max() <= 2 and (diff > 0).mean() < 0.01
    ref_float = F.interpolate(as_torch.double(), size=(224, 224), mode="bicubic", antialias=True, align_corners=False)
    ours_float = np.einsum("oh,hwc,pw->opc", bicubic_matrix(h, 224), image.astype(np.float64), bicubic_matrix(w, 224),
                           optimize=True)
    np.testing.assert_allclose(ours_float, ref_float[0].permute(1, 2, 0).numpy(), atol=1e-9)
