"""RetinaFace (Deng et al., 2019), the face detector of the public PyTorch release
(biubug6/Pytorch_Retinaface): a MobileNet-0.25 or ResNet-50 backbone, an FPN over its stride
8, 16 and 32 maps, an SSH context module per level, and per level 1×1 heads giving for each of
two anchors a face/background score, a box and five landmarks.

The module tree mirrors the release's, so conversion is a rename table
(`conversion/formats.py`, RETINAFACE_FORMATS). BatchNorm is folded into the convolution before
it at conversion (inference only: the detector is never trained here), so every convolution of
the release that is followed by a BatchNorm is one convolution with a bias:

  body/                    MobileNetV1: stage1_0 (3×3, stride 2) and stage{1,2,3}_i/{depthwise,
                           pointwise} (the release's conv_dw); or ResNet-50: conv1, layer{1..4}_i/
                           {conv1, conv2, conv3, downsample} (torchvision's Bottleneck)
  fpn/output{1,2,3}        1×1 laterals; fpn/merge{1,2}: 3×3 after adding the upsampled level
  ssh{1,2,3}/conv3X3, conv5X5_1, conv5X5_2, conv7X7_2, conv7x7_3 (the release's names)
  class_head_{0,1,2}, bbox_head_{0,1,2}, landmark_head_{0,1,2}   1×1 convolutions with biases

Activations: LeakyReLU(0.1) throughout MobileNet and, when the FPN is at most 64 wide, in the FPN
and SSH; ReLU otherwise (the release's rule). The FPN upsamples each coarser level to the size
of the finer lateral map by nearest neighbour (torch `interpolate(size=...)`: source index
floor(i · in / out), in float32), which matters at odd input sizes.

Anchors ("priors"): level k has a map of ceil(H / step_k) × ceil(W / step_k) cells and two
square anchors per cell, of sizes min_sizes[k], centred at (j + 0.5, i + 0.5) · step_k; ordered
row, column, anchor — the heads' output order. Decoding (the release's `decode`): centre =
prior centre + Δ · 0.1 · prior size, size = prior size · exp(Δ · 0.2); landmarks = prior centre
+ Δ · 0.1 · prior size. `detections` keeps the top `top_k` scores, suppresses overlaps greedily
(NMS, static shapes, on the device) and returns at most `max_faces` faces per image.

Input: [batch, H, W, 3] float32, BGR minus the release's mean (104, 117, 123) — `preprocess`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from omni_jax.layers import Conv, layer_dtypes

BGR_MEAN = (104.0, 117.0, 123.0)  # the release's detect.py subtracts this from BGR pixels
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCES = (0.1, 0.2)
# the release's two networks: the backbone's stride-8 width (its maps are 2×, 4×, 8× that) and the FPN/SSH width
BACKBONES = {"mobilenet0.25": dict(in_channel=32, out_channel=64),
             "resnet50": dict(in_channel=256, out_channel=256)}
KERNEL_AXES = (None, None, None, "conv_out")
MOBILENET_STAGES = {  # (output width, stride) of each conv_dw; stage1 starts with a 3×3 conv to 8, stride 2
    "stage1": ((16, 1), (32, 2), (32, 1), (64, 2), (64, 1)),
    "stage2": ((128, 2), (128, 1), (128, 1), (128, 1), (128, 1), (128, 1)),
    "stage3": ((256, 2), (256, 1)),
}
RESNET50_LAYERS = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, stride); expansion 4


def release_config(backbone: str = "mobilenet0.25") -> ml_collections.ConfigDict:
    """The released network `backbone` ("mobilenet0.25" or "resnet50")."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown RetinaFace backbone {backbone!r}; the release has {sorted(BACKBONES)}")
    return ml_collections.ConfigDict(dict(
        backbone=backbone, **BACKBONES[backbone],
        min_sizes=[list(s) for s in MIN_SIZES], steps=list(STEPS), variances=list(VARIANCES),
        dtype="float32", param_dtype="float32"))


def config_from_hf(source: dict[str, Any]) -> ml_collections.ConfigDict:
    """The release has no config file: `source` (what `config_to_hf` wrote) names the backbone."""
    return release_config(source.get("backbone", "mobilenet0.25"))


def config_to_hf(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    return dict(model_type="retinaface", backbone=cfg.backbone)


def dummy_inputs(cfg: ml_collections.ConfigDict) -> dict[str, jax.Array]:
    return {"images": jnp.zeros((1, 64, 64, 3), jnp.float32)}


def preprocess(frames: jax.Array) -> jax.Array:
    """frames: [batch, H, W, 3] uint8 RGB → the network's input, float32 BGR minus BGR_MEAN."""
    return frames[..., ::-1].astype(jnp.float32) - jnp.asarray(BGR_MEAN, jnp.float32)


def _activation(x: jax.Array, slope: float | None) -> jax.Array:
    """LeakyReLU(slope) (slope 0: ReLU), or nothing (None)."""
    return x if slope is None else jnp.where(x >= 0, x, x * slope)


def _conv(features: int, kernel: int, name: str, stride: int = 1, groups: int = 1, dtypes: dict | None = None) -> Conv:
    """A torch Conv2d(kernel, stride, padding kernel // 2) with its BatchNorm folded in (a bias)."""
    return Conv(features, (kernel, kernel), KERNEL_AXES, strides=(stride, stride), padding=(kernel // 2,) * 2,
                groups=groups, name=name, **(dtypes or {}))


class DepthwiseSeparable(nn.Module):
    """The release's conv_dw: 3×3 depthwise (stride) → LeakyReLU → 1×1 pointwise → LeakyReLU."""

    features: int
    stride: int
    dtypes: dict

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _activation(_conv(x.shape[-1], 3, "depthwise", self.stride, groups=x.shape[-1], dtypes=self.dtypes)(x), 0.1)
        return _activation(_conv(self.features, 1, "pointwise", dtypes=self.dtypes)(x), 0.1)


class MobileNetV1(nn.Module):
    """MobileNet-0.25 of the release → its stage1, stage2, stage3 maps (64, 128, 256 wide;
    strides 8, 16, 32)."""

    dtypes: dict

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        x = _activation(_conv(8, 3, "stage1_0", 2, dtypes=self.dtypes)(x), 0.1)
        outputs = []
        for stage, blocks in MOBILENET_STAGES.items():
            first = 1 if stage == "stage1" else 0
            for i, (features, stride) in enumerate(blocks, start=first):
                x = DepthwiseSeparable(features, stride, self.dtypes, name=f"{stage}_{i}")(x)
            outputs.append(x)
        return tuple(outputs)


class Bottleneck(nn.Module):
    """torchvision's ResNet Bottleneck (v1.5: the stride on the 3×3)."""

    width: int
    stride: int
    dtypes: dict

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.relu(_conv(self.width, 1, "conv1", dtypes=self.dtypes)(x))
        y = nn.relu(_conv(self.width, 3, "conv2", self.stride, dtypes=self.dtypes)(y))
        y = _conv(4 * self.width, 1, "conv3", dtypes=self.dtypes)(y)
        if self.stride != 1 or x.shape[-1] != 4 * self.width:
            x = _conv(4 * self.width, 1, "downsample", self.stride, dtypes=self.dtypes)(x)
        return nn.relu(x + y)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torch MaxPool2d(3, stride 2, padding 1): the padding never wins (−inf)."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                 ((0, 0), (1, 1), (1, 1), (0, 0)))


class ResNet50(nn.Module):
    """torchvision's ResNet-50 up to layer4 → the layer2, layer3, layer4 maps (512, 1024, 2048;
    strides 8, 16, 32)."""

    dtypes: dict

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        x = max_pool_3x3_s2(nn.relu(Conv(64, (7, 7), KERNEL_AXES, strides=(2, 2), padding=(3, 3), name="conv1",
                                         **self.dtypes)(x)))
        outputs = []
        for layer, (width, blocks, stride) in enumerate(RESNET50_LAYERS, start=1):
            for i in range(blocks):
                x = Bottleneck(width, stride if i == 0 else 1, self.dtypes, name=f"layer{layer}_{i}")(x)
            outputs.append(x)
        return tuple(outputs[1:])


def nearest_resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """torch `interpolate(x, size, mode="nearest")` on [batch, h, w, c]: output index i reads
    floor(i · (in / out)), the scale and the product in float32 as torch computes them."""
    rows, cols = (np.minimum(np.floor(np.arange(out, dtype=np.float32) * np.float32(inp / out)), inp - 1).astype(int)
                  for inp, out in zip(x.shape[1:3], size))
    return x[:, rows][:, :, cols]


class FPN(nn.Module):
    out_channel: int
    slope: float
    dtypes: dict

    @nn.compact
    def __call__(self, features: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        laterals = [_activation(_conv(self.out_channel, 1, f"output{i + 1}", dtypes=self.dtypes)(f), self.slope)
                    for i, f in enumerate(features)]
        output1, output2, output3 = laterals
        output2 = output2 + nearest_resize(output3, output2.shape[1:3])
        output2 = _activation(_conv(self.out_channel, 3, "merge2", dtypes=self.dtypes)(output2), self.slope)
        output1 = output1 + nearest_resize(output2, output1.shape[1:3])
        output1 = _activation(_conv(self.out_channel, 3, "merge1", dtypes=self.dtypes)(output1), self.slope)
        return output1, output2, output3


class SSH(nn.Module):
    """Context module: a 3×3 branch (half the width) and 5×5 and 7×7 receptive fields from
    stacked 3×3s (a quarter each, sharing their first conv), concatenated, then ReLU."""

    out_channel: int
    slope: float
    dtypes: dict

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        quarter = self.out_channel // 4
        conv3 = _conv(self.out_channel // 2, 3, "conv3X3", dtypes=self.dtypes)(x)
        conv5_1 = _activation(_conv(quarter, 3, "conv5X5_1", dtypes=self.dtypes)(x), self.slope)
        conv5 = _conv(quarter, 3, "conv5X5_2", dtypes=self.dtypes)(conv5_1)
        conv7_2 = _activation(_conv(quarter, 3, "conv7X7_2", dtypes=self.dtypes)(conv5_1), self.slope)
        conv7 = _conv(quarter, 3, "conv7x7_3", dtypes=self.dtypes)(conv7_2)
        return nn.relu(jnp.concatenate([conv3, conv5, conv7], axis=-1))


class RetinaFace(nn.Module):
    config: ml_collections.FrozenConfigDict

    @nn.compact
    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        """images: [batch, H, W, 3] (`preprocess`) → per anchor (N = Σ_k 2 · ceil(H / s_k) · ceil(W / s_k)):
        loc [batch, N, 4] box offsets, conf [batch, N, 2] softmax (background, face), landmarks
        [batch, N, 10] offsets — the release's outputs in its test phase."""
        cfg = self.config
        dtypes = layer_dtypes(cfg)
        slope = 0.1 if cfg.out_channel <= 64 else 0.0
        body = (MobileNetV1 if cfg.backbone == "mobilenet0.25" else ResNet50)(dtypes, name="body")
        levels = FPN(cfg.out_channel, slope, dtypes, name="fpn")(body(images))
        features = [SSH(cfg.out_channel, slope, dtypes, name=f"ssh{i + 1}")(x) for i, x in enumerate(levels)]
        anchors = len(cfg.min_sizes[0])

        def head(kind: str, width: int) -> jax.Array:
            outs = [_conv(anchors * width, 1, f"{kind}_{i}", dtypes=dtypes)(x) for i, x in enumerate(features)]
            return jnp.concatenate([o.reshape(o.shape[0], -1, width) for o in outs], axis=1).astype(jnp.float32)

        return {"loc": head("bbox_head", 4), "conf": jax.nn.softmax(head("class_head", 2), axis=-1),
                "landmarks": head("landmark_head", 10)}


def prior_boxes(height: int, width: int, cfg: ml_collections.ConfigDict) -> np.ndarray:
    """[N, 4] anchors (cx, cy, w, h) as fractions of the input size, in the heads' order."""
    priors = []
    for sizes, step in zip(cfg.min_sizes, cfg.steps):
        rows, cols = -(-height // step), -(-width // step)
        cy, cx = np.meshgrid((np.arange(rows) + 0.5) * step / height, (np.arange(cols) + 0.5) * step / width,
                             indexing="ij")
        for_cell = [np.stack([cx, cy, np.full_like(cx, s / width), np.full_like(cy, s / height)], axis=-1)
                    for s in sizes]
        priors.append(np.stack(for_cell, axis=2).reshape(-1, 4))
    return np.concatenate(priors).astype(np.float32)


def decode(loc: jax.Array, landmarks: jax.Array, priors: np.ndarray, height: int, width: int,
           variances: tuple[float, float] = VARIANCES) -> tuple[jax.Array, jax.Array]:
    """loc [..., N, 4], landmarks [..., N, 10] → boxes [..., N, 4] (x0, y0, x1, y1) and points
    [..., N, 5, 2] (x, y), in pixels of the H × W input."""
    centre, size = priors[:, :2], priors[:, 2:]
    box_centre = centre + loc[..., :2] * variances[0] * size
    box_size = size * jnp.exp(loc[..., 2:] * variances[1])
    scale = jnp.asarray([width, height], jnp.float32)
    boxes = jnp.concatenate([box_centre - box_size / 2, box_centre + box_size / 2], axis=-1) * jnp.tile(scale, 2)
    points = (centre[:, None] + landmarks.reshape(*landmarks.shape[:-1], 5, 2) * variances[0] * size[:, None]) * scale
    return boxes, points


def box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """a [n, 4], b [m, 4] corner boxes → [n, m] intersection over union."""
    top_left = jnp.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = jnp.prod(jnp.clip(bottom_right - top_left, 0), axis=-1)
    area = lambda x: jnp.prod(jnp.clip(x[:, 2:] - x[:, :2], 0), axis=-1)
    return inter / jnp.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def nms(boxes: jax.Array, scores: jax.Array, valid: jax.Array, iou_threshold: float) -> jax.Array:
    """Greedy non-maximum suppression of one image's candidates, sorted by descending score:
    boxes [k, 4], scores [k], valid [k] bool → keep [k] bool. A candidate is kept when no kept
    candidate before it overlaps it by more than `iou_threshold` (static shapes: k steps)."""
    overlaps = box_iou(boxes, boxes) > iou_threshold
    later = jnp.arange(boxes.shape[0])[None, :] > jnp.arange(boxes.shape[0])[:, None]

    def step(i, keep):
        return keep & ~(keep[i] & overlaps[i] & later[i])

    return jax.lax.fori_loop(0, boxes.shape[0], step, valid)


def detections(outputs: dict[str, jax.Array], height: int, width: int, cfg: ml_collections.ConfigDict,
               score_threshold: float, iou_threshold: float = 0.4, top_k: int = 256,
               max_faces: int = 32) -> dict[str, jax.Array]:
    """The network's outputs for [batch, H, W, 3] inputs → per image at most `max_faces` faces
    by descending score: boxes [batch, F, 4] and landmarks [batch, F, 5, 2] in input pixels,
    scores [batch, F], valid [batch, F] bool (False: padding). Candidates: the `top_k` best
    anchors scoring at least `score_threshold`, then NMS at `iou_threshold` (the release's 0.4)."""
    boxes, points = decode(outputs["loc"], outputs["landmarks"], prior_boxes(height, width, cfg), height, width,
                           tuple(cfg.variances))
    top_k = min(top_k, boxes.shape[1])
    max_faces = min(max_faces, top_k)

    def one_image(boxes, points, scores):
        scores, order = jax.lax.top_k(scores, top_k)
        boxes, points = boxes[order], points[order]
        keep = nms(boxes, scores, scores >= score_threshold, iou_threshold)
        # the kept candidates first, still by score (a stable sort of the kept flags)
        first = jnp.argsort(~keep, stable=True)[:max_faces]
        return {"boxes": boxes[first], "landmarks": points[first], "scores": scores[first], "valid": keep[first]}

    return jax.vmap(one_image)(boxes, points, outputs["conf"][..., 1])
