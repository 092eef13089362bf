"""Reading and writing PyTorch checkpoints one tensor at a time, without unpickling code.

safetensors files are parsed directly (a JSON header and raw little-endian bytes), so bf16 is
read into `ml_dtypes.bfloat16` without torch and each tensor is read with one `readinto`
into a fresh buffer: nothing stays memory-mapped, so resident memory is one tensor.
`pytorch_model*.bin` goes through `torch.load(weights_only=True, mmap=True)`.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
import ml_dtypes
import numpy as np

SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
NUMPY_TO_SAFETENSORS = {v: k for k, v in SAFETENSORS_DTYPES.items()}
SHARD_BYTES = 5 * 1024**3


class TensorInfo:
    __slots__ = ("file", "shape", "dtype", "offset")

    def __init__(self, file: Path, shape: tuple[int, ...], dtype: np.dtype, offset: int | None):
        self.file, self.shape, self.dtype, self.offset = file, shape, dtype, offset

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def _safetensors_header(path: Path) -> dict[str, TensorInfo]:
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    base = 8 + header_len
    infos = {}
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        if meta["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {key!r} has unsupported dtype {meta['dtype']}")
        infos[key] = TensorInfo(path, tuple(meta["shape"]), SAFETENSORS_DTYPES[meta["dtype"]],
                                base + meta["data_offsets"][0])
    return infos


def weight_files(src: Path) -> list[Path]:
    """The weight files of a Hugging Face directory, safetensors preferred over .bin."""
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = sorted(p for p in src.glob(pattern) if p.is_file())
        if files:
            return files
    raise FileNotFoundError(f"{src}: no *.safetensors or pytorch_model*.bin weight files")


class CheckpointReader:
    """Lazy view of every tensor in a checkpoint directory: names and shapes first, data on read."""

    def __init__(self, src: str | os.PathLike):
        self.src = Path(src)
        self.files = weight_files(self.src)
        self.tensors: dict[str, TensorInfo] = {}
        self._torch_state: dict[Path, dict] = {}
        for file in self.files:
            infos = _safetensors_header(file) if file.suffix == ".safetensors" else self._torch_header(file)
            for key, info in infos.items():
                if key in self.tensors:
                    raise ValueError(f"tensor {key!r} appears in both {self.tensors[key].file} and {file}")
                self.tensors[key] = info

    def _torch_header(self, file: Path) -> dict[str, TensorInfo]:
        import torch  # only .bin checkpoints need torch (the `convert` extra)

        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        self._torch_state[file] = state
        return {k: TensorInfo(file, tuple(v.shape), _torch_np_dtype(v.dtype), None) for k, v in state.items()}

    def keys(self) -> list[str]:
        return list(self.tensors)

    def read(self, key: str) -> np.ndarray:
        info = self.tensors[key]
        if info.offset is None:
            return _torch_to_numpy(self._torch_state[info.file][key])
        out = np.empty(info.shape, info.dtype)
        with open(info.file, "rb") as f:
            f.seek(info.offset)
            view = memoryview(out.reshape(-1).view(np.uint8))
            if f.readinto(view) != info.nbytes:
                raise ValueError(f"{info.file}: tensor {key!r} is truncated")
        return out


def _torch_np_dtype(dtype) -> np.dtype:
    import torch

    if dtype == torch.bfloat16:
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(torch.empty((), dtype=dtype).numpy().dtype)


def _torch_to_numpy(tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().copy().view(ml_dtypes.bfloat16)
    return tensor.numpy().copy()


class SafetensorsWriter:
    """Writes tensors as they come into ≤5 GB safetensors shards plus the index transformers reads.

    Each shard's tensors are buffered only until the shard is written."""

    def __init__(self, dst: Path, shard_bytes: int = SHARD_BYTES):
        self.dst, self.shard_bytes = dst, shard_bytes
        self.pending: list[tuple[str, np.ndarray]] = []
        self.pending_bytes = 0
        self.shards: list[list[str]] = []
        self.total_bytes = 0

    def add(self, key: str, array: np.ndarray) -> None:
        if self.pending and self.pending_bytes + array.nbytes > self.shard_bytes:
            self._flush()
        self.pending.append((key, np.ascontiguousarray(array)))
        self.pending_bytes += array.nbytes
        self.total_bytes += array.nbytes

    def _flush(self) -> None:
        index = len(self.shards)
        path = self.dst / f"model-{index:05d}.safetensors.tmp"
        header, offset = {}, 0
        for key, array in self.pending:
            header[key] = {"dtype": NUMPY_TO_SAFETENSORS[array.dtype], "shape": list(array.shape),
                           "data_offsets": [offset, offset + array.nbytes]}
            offset += array.nbytes
        header["__metadata__"] = {"format": "pt"}
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for _, array in self.pending:
                f.write(array.reshape(-1).view(np.uint8).data)
        self.shards.append([key for key, _ in self.pending])
        self.pending, self.pending_bytes = [], 0

    def close(self) -> list[Path]:
        if self.pending or not self.shards:
            self._flush()
        n = len(self.shards)
        names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for i, name in enumerate(names):
            os.replace(self.dst / f"model-{i:05d}.safetensors.tmp", self.dst / name)
        if n > 1:
            weight_map = {key: names[i] for i, keys in enumerate(self.shards) for key in keys}
            with open(self.dst / "model.safetensors.index.json", "w") as f:
                json.dump({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}, f, indent=2)
        return [self.dst / name for name in names]

