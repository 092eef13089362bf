"""The conversion jobs: `omni-jax convert`, `export`, `convert-facexformer`, `convert-retinaface`
and `assemble` (docs/conversion.md). Each reads `cfg.convert` (dtype, naming, seed) and, where it
builds part of a model, `cfg.model` (the omni_emotion config's)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ml_collections

from omni_jax.checkpoint_dir import read_config
from omni_jax.config_flags import check_ranges
from omni_jax.progress import QUIET, Progress

CONVERT_FIELDS = {"convert.dtype": ("", "float32", "bfloat16", "float16")}


def _dtype(cfg: ml_collections.ConfigDict) -> str | None:
    check_ranges(cfg, CONVERT_FIELDS)
    return cfg.convert.dtype or None


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _written(dst: Path) -> dict[str, Any]:
    """The summary of a checkpoint written at `dst`."""
    meta = read_config(dst)
    return {"dst": str(dst), "model_type": meta["model_type"], "source_format": meta["source_format"],
            "dtype": meta["dtype"], "bytes": _bytes(dst)}


def convert(cfg: ml_collections.ConfigDict, *, src: str | os.PathLike, dst: str | os.PathLike,
            progress: Progress = QUIET) -> dict[str, Any]:
    """A Hugging Face checkpoint folder → an omni_jax checkpoint at `dst`."""
    from omni_jax.conversion.engine import convert_hf_to_orbax

    return _written(convert_hf_to_orbax(src, dst, dtype=_dtype(cfg), progress=progress))


def export(cfg: ml_collections.ConfigDict, *, src: str | os.PathLike, dst: str | os.PathLike,
           progress: Progress = QUIET) -> dict[str, Any]:
    """An omni_jax checkpoint → safetensors and config.json at `dst` (cfg.convert.naming: whose key names)."""
    from omni_jax.conversion.engine import export_orbax_to_hf

    dst = export_orbax_to_hf(src, dst, dtype=_dtype(cfg), naming=cfg.convert.naming or None, progress=progress)
    return {"dst": str(dst), "files": sorted(p.name for p in dst.iterdir()), "bytes": _bytes(dst)}


def convert_facexformer(cfg: ml_collections.ConfigDict, *, src: str | os.PathLike, dst: str | os.PathLike,
                        progress: Progress = QUIET) -> dict[str, Any]:
    """The FaceXFormer release file → the face encoder `cfg.model.face` describes, at `dst`."""
    from omni_jax.conversion.facexformer import convert_facexformer as convert_release
    from omni_jax.models.facexformer import face_tokens

    face = ml_collections.ConfigDict(cfg.model.face.to_dict())
    face.update(dtype="float32", param_dtype="float32")
    dst = convert_release(src, dst, face, dtype=_dtype(cfg), seed=cfg.convert.seed, progress=progress)
    initialised = "projector_init" in read_config(dst)["hf_config"]
    return {**_written(dst), "face_tokens": face_tokens(face),
            "projector": f"initialised, seed {cfg.convert.seed}" if initialised else "from the file"}


def convert_retinaface(cfg: ml_collections.ConfigDict, *, src: str | os.PathLike | None = None,
                       dst: str | os.PathLike, progress: Progress = QUIET) -> dict[str, Any]:
    """RetinaFace weights (a release .pth, an .onnx export; None: the bundled ones) → a face detector at `dst`."""
    from omni_jax.conversion.retinaface import BUNDLED
    from omni_jax.conversion.retinaface import convert_retinaface as convert_weights

    dst = convert_weights(src or BUNDLED, dst, dtype=_dtype(cfg), progress=progress)
    return {**_written(dst), "backbone": read_config(dst)["config"]["backbone"]}


def assemble(cfg: ml_collections.ConfigDict, *, llava: str | os.PathLike, whisper: str | os.PathLike,
             face: str | os.PathLike, dst: str | os.PathLike, progress: Progress = QUIET) -> dict[str, Any]:
    """Converted LLaVA-OneVision, Whisper and FaceXFormer → the Omni-Emotion of `cfg.model` at `dst`."""
    from omni_jax.conversion.assemble import assemble_omni_emotion
    from omni_jax.models.omni_emotion import FUSIONS

    check_ranges(cfg, {"model.fusion": FUSIONS})
    dst = assemble_omni_emotion(llava, whisper, face, dst, cfg.model, seed=cfg.convert.seed, dtype=_dtype(cfg),
                                progress=progress)
    return {**_written(dst), "fusion": cfg.model.fusion}
