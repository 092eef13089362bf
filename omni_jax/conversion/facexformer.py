"""Converting the FaceXFormer release (a torch file, no config.json) into the face encoder.

`torch.load(path, weights_only=True)["state_dict_backbone"]` holds torchvision swin_b under
`backbone.0.*` / `backbone.1.*`, the fusion head (`linear_c.*`, `linear_fuse.weight`), the
task decoder `face_decoder.*` and the random positional matrix `pe_layer.*`; the last two are
not part of the encoder and are dropped. Omni-Emotion's face projector is not in the release:
unless the file carries `face_projector.linear_{1,2}.{weight,bias}` (e.g. a phase-2 result),
it is initialised as torch.nn.Linear does (weight and bias uniform in ±1/√fan_in, numpy seed
`seed`) and goes through the same engine and checks as every released tensor.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import ml_collections
import numpy as np

from omni_jax import registry
from omni_jax.conversion.engine import write_checkpoint
from omni_jax.conversion.io import CheckpointReader, TensorInfo
from omni_jax.models import facexformer
from omni_jax.progress import QUIET, Progress

log = logging.getLogger(__name__)

STATE_DICT_KEY = "state_dict_backbone"
PROJECTOR_PREFIX = "face_projector."
PROJECTOR_INIT = "torch.nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias"


def initial_projector(fusion_width: int, llm_width: int, seed: int) -> dict[str, np.ndarray]:
    """torch-layout tensors of a freshly initialised Linear(fusion → llm), GELU, Linear(llm → llm)."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, (fan_in, fan_out) in (("linear_1", (fusion_width, llm_width)), ("linear_2", (llm_width, llm_width))):
        bound = 1.0 / np.sqrt(fan_in)
        tensors[f"{PROJECTOR_PREFIX}{name}.weight"] = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32)
        tensors[f"{PROJECTOR_PREFIX}{name}.bias"] = rng.uniform(-bound, bound, (fan_out,)).astype(np.float32)
    return tensors


class ReaderWithTensors:
    """A checkpoint reader plus in-memory tensors, behind the interface the engine reads."""

    def __init__(self, reader: CheckpointReader, extra: dict[str, np.ndarray]):
        self.src, self._reader, self._extra = reader.src, reader, extra
        self.tensors = {**reader.tensors,
                        **{k: TensorInfo(reader.src, v.shape, v.dtype, None) for k, v in extra.items()}}

    def keys(self) -> list[str]:
        return list(self.tensors)

    def read(self, key: str) -> np.ndarray:
        return self._extra[key] if key in self._extra else self._reader.read(key)


def _log_dropped(keys: list[str]) -> None:
    for prefix, what in (("face_decoder.", "task decoder"), ("pe_layer.", "random positional matrix")):
        count = sum(k.startswith(prefix) for k in keys)
        if count:
            log.info("dropping FaceXFormer's %s: %d tensor(s) %s*", what, count, prefix)


def convert_facexformer(src: str | os.PathLike, dst: str | os.PathLike,
                        config: ml_collections.ConfigDict | None = None, dtype: str | None = None, seed: int = 0,
                        progress: Progress = QUIET) -> Path:
    """Converts the release file `src` into `dst` (orbax params + omni_jax.json).

    config: the encoder's configuration; default `facexformer.release_config()` (Swin-B,
    14×14 face tokens, 3584-wide projector). dtype: stored dtype (default: the source's).
    seed: of the projector's initialisation, when the file has none. Raises ConversionError
    naming every missing, unexpected or mis-shaped tensor; nothing is left at `dst` on error.
    """
    config = config if config is not None else facexformer.release_config()
    reader = CheckpointReader(src, state_dict_key=STATE_DICT_KEY)
    _log_dropped(reader.keys())
    source = {**facexformer.config_to_hf(config), "source": f"FaceXFormer release ({STATE_DICT_KEY})"}
    if not any(k.startswith(PROJECTOR_PREFIX) for k in reader.keys()):
        log.info("the release has no face projector: initialising it (%s, seed %d)", PROJECTOR_INIT, seed)
        reader = ReaderWithTensors(reader, initial_projector(config.decoder_hidden_size, config.llm_width, seed))
        source["projector_init"] = {"scheme": PROJECTOR_INIT, "seed": seed}
    return write_checkpoint(reader, registry.FAMILIES["facexformer"], config, dst, dtype, source, progress)
