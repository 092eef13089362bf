"""Reading and writing PyTorch checkpoints one tensor at a time, without unpickling code.

safetensors files are parsed directly (a JSON header and raw little-endian bytes), so bf16 is
read into `ml_dtypes.bfloat16` without torch and each tensor is read with one `readinto`
into a fresh buffer: nothing stays memory-mapped, so resident memory is one tensor.
`pytorch_model*.bin` goes through `torch.load(weights_only=True, mmap=True)`.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import re
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from omni_jax.errors import CheckpointRefused, MissingInputError

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
            raise CheckpointRefused(f"{path}: tensor {key!r} has unsupported dtype {meta['dtype']}")
        infos[key] = TensorInfo(path, tuple(meta["shape"]), SAFETENSORS_DTYPES[meta["dtype"]],
                                base + meta["data_offsets"][0])
    return infos


def weight_files(src: Path) -> list[Path]:
    """The weight files of a Hugging Face directory, safetensors preferred over .bin."""
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = sorted(p for p in src.glob(pattern) if p.is_file())
        if files:
            return files
    raise MissingInputError(f"{src}: no *.safetensors or pytorch_model*.bin weight files")


class CheckpointReader:
    """Lazy view of every tensor in a checkpoint: names and shapes first, data on read.

    src: a Hugging Face directory, or a single .pt/.bin/.safetensors file. state_dict_key:
    for torch files that nest their weights (FaceXFormer's `state_dict_backbone`).
    """

    def __init__(self, src: str | os.PathLike, state_dict_key: str | None = None):
        self.src = Path(src)
        self.state_dict_key = state_dict_key
        self.files = [self.src] if self.src.is_file() else weight_files(self.src)
        self.tensors: dict[str, TensorInfo] = {}
        self._torch_state: dict[Path, dict] = {}
        for file in self.files:
            infos = _safetensors_header(file) if file.suffix == ".safetensors" else self._torch_header(file)
            for key, info in infos.items():
                if key in self.tensors:
                    raise CheckpointRefused(f"tensor {key!r} appears in both {self.tensors[key].file} and {file}")
                self.tensors[key] = info

    def _torch_header(self, file: Path) -> dict[str, TensorInfo]:
        import torch  # only .bin checkpoints need torch (the `convert` extra)

        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as error:  # torch's advice here is to load it unsafely: not ours
            named = re.search(r"(?i)unsupported global:? (\S+)", str(error))  # torch names the global it met
            found = named.group(1) if named else "a non-tensor object"
            raise CheckpointRefused(
                f"{file}: holds {found}, not only tensors, so it was not loaded (unpickling it could run code). From "
                "a copy you trust, write a safe file: torch.load(..., weights_only=False) there, then "
                "safetensors.torch.save_file(state_dict, 'model.safetensors')"
            ) from None
        except (RuntimeError, OSError) as error:  # not a zip archive, a truncated one (mmap: EINVAL), ...
            if isinstance(error, OSError) and error.errno != errno.EINVAL:
                raise  # the machine's (a lost mount, ...): not the file's fault
            raise CheckpointRefused(
                f"{file}: not a readable PyTorch checkpoint ({str(error).splitlines()[0][:200]})"
            ) from None
        if self.state_dict_key is not None:
            if self.state_dict_key not in state:
                raise CheckpointRefused(f"{file}: no {self.state_dict_key!r} entry (found {sorted(state)[:10]})")
            state = state[self.state_dict_key]
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
                raise CheckpointRefused(f"{info.file}: tensor {key!r} is truncated")
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
    """Streams tensors into ≤5 GB safetensors shards plus the index transformers reads.

    Shard headers are planned up front from the (key, shape, dtype) list, so tensors are
    written as they come, in that order, and only the tensor being written is in memory."""

    def __init__(self, dst: Path, entries: list[tuple[str, tuple[int, ...], np.dtype]],
                 shard_bytes: int = SHARD_BYTES):
        self.dst = Path(dst)
        self.shards: list[list[tuple[str, tuple[int, ...], np.dtype]]] = [[]]
        size = 0
        for key, shape, dtype in entries:
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            if self.shards[-1] and size + nbytes > shard_bytes:
                self.shards.append([])
                size = 0
            self.shards[-1].append((key, tuple(shape), np.dtype(dtype)))
            size += nbytes
        n = len(self.shards)
        self.names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                                                           for i in range(n)]
        self._order = [(i, key, shape, dtype) for i, shard in enumerate(self.shards) for key, shape, dtype in shard]
        self._next = 0
        self._file = None
        self._file_index = -1

    def _open(self, index: int) -> None:
        if self._file:
            self._file.close()
        header, offset = {}, 0
        for key, shape, dtype in self.shards[index]:
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            header[key] = {"dtype": NUMPY_TO_SAFETENSORS[dtype], "shape": list(shape),
                           "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        header["__metadata__"] = {"format": "pt"}
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self._file = open(self.dst / f"{self.names[index]}.tmp", "wb")
        self._file.write(struct.pack("<Q", len(blob)))
        self._file.write(blob)
        self._file_index = index

    def write(self, key: str, array: np.ndarray) -> None:
        index, expected_key, shape, dtype = self._order[self._next]
        if (key, tuple(array.shape), array.dtype) != (expected_key, shape, dtype):
            raise ValueError(f"writing {key!r} {list(array.shape)} {array.dtype}, but the plan expects "
                             f"{expected_key!r} {list(shape)} {dtype} next")
        if index != self._file_index:
            self._open(index)
        self._file.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
        self._next += 1

    def close(self) -> list[Path]:
        if self._next != len(self._order):
            raise ValueError(f"only {self._next} of {len(self._order)} planned tensors were written")
        if self._file_index < len(self.shards) - 1:  # a plan with no tensors still writes its (empty) file
            self._open(len(self.shards) - 1)
        self._file.close()
        for name in self.names:
            os.replace(self.dst / f"{name}.tmp", self.dst / name)
        if len(self.names) > 1:
            weight_map = {key: self.names[i] for i, shard in enumerate(self.shards) for key, _, _ in shard}
            total = sum(int(np.prod(s, dtype=np.int64)) * d.itemsize for shard in self.shards for _, s, d in shard)
            with open(self.dst / "model.safetensors.index.json", "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        return [self.dst / name for name in self.names]


def write_safetensors(dst: Path, tensors: dict[str, np.ndarray], shard_bytes: int = SHARD_BYTES) -> list[Path]:
    """Writes an in-memory {key: array} dict (small checkpoints, tests)."""
    writer = SafetensorsWriter(dst, [(k, v.shape, v.dtype) for k, v in tensors.items()], shard_bytes)
    for key, value in tensors.items():
        writer.write(key, value)
    return writer.close()
