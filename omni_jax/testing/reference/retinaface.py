"""RetinaFace in PyTorch as the public release (biubug6/Pytorch_Retinaface, models/retinaface.py
and models/net.py) builds it, BatchNorm unfolded, for the parity tests and the benchmark: its
`state_dict()` has the release checkpoints' keys (`body.*`, `fpn.*`, `ssh{1,2,3}.*`,
`{ClassHead,BboxHead,LandmarkHead}.{0,1,2}.conv1x1.*`). The ResNet-50 body is torchvision's
(conv1, bn1, layer1..4; torchvision does not load beside the CPU build of torch, so it is
written out here), cut after layer4 as the release's IntermediateLayerGetter keeps it.

torch is imported on first use: `RetinaFace` is defined on first access (PEP 562), so importing
this module needs no torch (tests/test_imports.py)."""
from __future__ import annotations

import functools

from omni_jax.models.retinaface import BACKBONES, MOBILENET_STAGES, RESNET50_LAYERS


@functools.cache
def _modules() -> dict[str, type]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    def conv_bn(inp, oup, stride=1, leaky=0.0, kernel=3, relu=True, groups=1):
        layers = [nn.Conv2d(inp, oup, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(oup)]
        return nn.Sequential(*layers, *([nn.LeakyReLU(negative_slope=leaky)] if relu else []))

    def conv_dw(inp, oup, stride, leaky=0.1):
        return nn.Sequential(nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp),
                             nn.LeakyReLU(negative_slope=leaky),
                             nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
                             nn.LeakyReLU(negative_slope=leaky))

    class MobileNetV1(nn.Module):
        def __init__(self):
            super().__init__()
            width = 8
            for stage, blocks in MOBILENET_STAGES.items():
                layers = [conv_bn(3, 8, 2, leaky=0.1)] if stage == "stage1" else []
                for features, stride in blocks:
                    layers.append(conv_dw(width, features, stride))
                    width = features
                setattr(self, stage, nn.Sequential(*layers))

        def forward(self, x):
            outputs = []
            for stage in MOBILENET_STAGES:
                x = getattr(self, stage)(x)
                outputs.append(x)
            return outputs

    class Bottleneck(nn.Module):
        def __init__(self, inp, width, stride):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(inp, width, 1, bias=False), nn.BatchNorm2d(width)
            self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
            self.conv3, self.bn3 = nn.Conv2d(width, 4 * width, 1, bias=False), nn.BatchNorm2d(4 * width)
            self.downsample = (nn.Sequential(nn.Conv2d(inp, 4 * width, 1, stride, bias=False),
                                             nn.BatchNorm2d(4 * width))
                               if stride != 1 or inp != 4 * width else None)

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            y = F.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return F.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet50Body(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            inp = 64
            for layer, (width, blocks, stride) in enumerate(RESNET50_LAYERS, start=1):
                modules = []
                for i in range(blocks):
                    modules.append(Bottleneck(inp, width, stride if i == 0 else 1))
                    inp = 4 * width
                setattr(self, f"layer{layer}", nn.Sequential(*modules))

        def forward(self, x):
            x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
            outputs = []
            for layer in range(1, 5):
                x = getattr(self, f"layer{layer}")(x)
                outputs.append(x)
            return outputs[1:]

    class FPN(nn.Module):
        def __init__(self, widths, out):
            super().__init__()
            leaky = 0.1 if out <= 64 else 0.0
            for i, width in enumerate(widths, start=1):
                setattr(self, f"output{i}", conv_bn(width, out, leaky=leaky, kernel=1))
            self.merge1 = conv_bn(out, out, leaky=leaky)
            self.merge2 = conv_bn(out, out, leaky=leaky)

        def forward(self, features):
            output1, output2, output3 = (getattr(self, f"output{i}")(f) for i, f in enumerate(features, start=1))
            output2 = self.merge2(output2 + F.interpolate(output3, size=output2.shape[2:], mode="nearest"))
            output1 = self.merge1(output1 + F.interpolate(output2, size=output1.shape[2:], mode="nearest"))
            return [output1, output2, output3]

    class SSH(nn.Module):
        def __init__(self, inp, out):
            super().__init__()
            leaky = 0.1 if out <= 64 else 0.0
            self.conv3X3 = conv_bn(inp, out // 2, relu=False)
            self.conv5X5_1 = conv_bn(inp, out // 4, leaky=leaky)
            self.conv5X5_2 = conv_bn(out // 4, out // 4, relu=False)
            self.conv7X7_2 = conv_bn(out // 4, out // 4, leaky=leaky)
            self.conv7x7_3 = conv_bn(out // 4, out // 4, relu=False)

        def forward(self, x):
            conv5_1 = self.conv5X5_1(x)
            branches = [self.conv3X3(x), self.conv5X5_2(conv5_1), self.conv7x7_3(self.conv7X7_2(conv5_1))]
            return F.relu(torch.cat(branches, dim=1))

    class Head(nn.Module):
        def __init__(self, inp, width, anchors=2):
            super().__init__()
            self.width = width
            self.conv1x1 = nn.Conv2d(inp, anchors * width, 1)

        def forward(self, x):
            out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
            return out.view(out.shape[0], -1, self.width)

    class RetinaFace(nn.Module):
        """The release's network in its test phase: (loc, softmax(conf), landmarks)."""

        def __init__(self, backbone="mobilenet0.25"):
            super().__init__()
            widths = BACKBONES[backbone]
            self.body = MobileNetV1() if backbone == "mobilenet0.25" else ResNet50Body()
            stage = widths["in_channel"]
            out = widths["out_channel"]
            self.fpn = FPN([2 * stage, 4 * stage, 8 * stage], out)
            self.ssh1, self.ssh2, self.ssh3 = SSH(out, out), SSH(out, out), SSH(out, out)
            self.ClassHead = nn.ModuleList(Head(out, 2) for _ in range(3))
            self.BboxHead = nn.ModuleList(Head(out, 4) for _ in range(3))
            self.LandmarkHead = nn.ModuleList(Head(out, 10) for _ in range(3))

        def forward(self, images):
            """images: [batch, 3, H, W] BGR minus the mean → loc [batch, N, 4], conf [batch, N, 2],
            landmarks [batch, N, 10]."""
            levels = self.fpn(self.body(images))
            features = [self.ssh1(levels[0]), self.ssh2(levels[1]), self.ssh3(levels[2])]
            heads = lambda modules: torch.cat([m(f) for m, f in zip(modules, features)], dim=1)
            return heads(self.BboxHead), F.softmax(heads(self.ClassHead), dim=-1), heads(self.LandmarkHead)

    return {"RetinaFace": RetinaFace}


def __getattr__(name: str) -> type:
    if name == "RetinaFace":
        return _modules()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def randomize(model, seed: int = 0):
    """Random weights and BatchNorm statistics (the default init leaves BN an identity, which
    would hide a folding bug), in eval mode: activations of pixel-sized inputs (±128) grow to
    hundreds through ResNet-50, the heads' outputs stay within ~±10 as a trained network's."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(("running_mean", "bn1.bias", "bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif tensor.ndim == 1:  # BatchNorm scales
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:  # convolutions: variance-preserving; the heads' small, so that the scores stay off
                # the softmax's saturation (there a logit's float32 rounding is the whole difference)
                fan_in = tensor[0].numel()
                gain = 0.01 if "Head" in name else 1.0
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * gain * (1.0 / fan_in) ** 0.5)
    return model.eval()


def prior_box(height: int, width: int, min_sizes=((16, 32), (64, 128), (256, 512)), steps=(8, 16, 32)):
    """The release's PriorBox (layers/functions/prior_box.py): [N, 4] (cx, cy, w, h), as a torch tensor."""
    import itertools
    import math

    import torch

    anchors = []
    for sizes, step in zip(min_sizes, steps):
        for i, j in itertools.product(range(math.ceil(height / step)), range(math.ceil(width / step))):
            for size in sizes:
                anchors += [(j + 0.5) * step / width, (i + 0.5) * step / height, size / width, size / height]
    return torch.tensor(anchors).view(-1, 4)


def decode(loc, priors, variances=(0.1, 0.2)):
    """The release's `decode` (utils/box_utils.py): [N, 4] offsets → [N, 4] corners, as fractions."""
    import torch

    boxes = torch.cat((priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:],
                       priors[:, 2:] * torch.exp(loc[:, 2:] * variances[1])), 1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def decode_landmarks(pre, priors, variances=(0.1, 0.2)):
    """The release's `decode_landm`: [N, 10] offsets → [N, 10] points (x, y) × 5, as fractions."""
    import torch

    return torch.cat([priors[:, :2] + pre[:, 2 * k:2 * k + 2] * variances[0] * priors[:, 2:] for k in range(5)], dim=1)
