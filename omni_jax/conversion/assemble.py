"""An Omni-Emotion checkpoint built from converted parts, one leaf at a time.

LLaVA-OneVision's tree is Omni-Emotion's top level (same names), the Whisper encoder goes under
`audio_encoder/` and the FaceXFormer encoder (with its face projector) under `face_encoder/`.
Every leaf is read from its part, checked against the assembled model's shape and written on its
own, so the host holds about one leaf — never two copies of the LLM. What no part holds (the
audio projector, frame embeddings, face cross-attention) comes from the modules' own
initialisers; the new special tokens' embedding rows (and untied head columns) are set to the
mean of the rows before the first of them (the tokens the LLM learned).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from omni_jax import registry
from omni_jax.checkpoint_dir import (
    DTYPES,
    PARAMS_DIR,
    checkpoint_writer,
    copy_side_files,
    flat_leaves,
    load_leaf,
    read_config,
    stored_leaves,
)
from omni_jax.conversion.engine import ConversionError, abstract_params
from omni_jax.modality_tokens import SPECIAL_TOKENS
from omni_jax.models.omni_emotion import fill_token_rows
from omni_jax.progress import QUIET, Progress

PARTS = {"": "llava_onevision", "audio_encoder/": "whisper", "face_encoder/": "facexformer"}  # prefix → model type
TOKEN_TABLES = {"language_model/model/embed_tokens/embedding": 0, "language_model/lm_head/kernel": 1}  # vocab axis


def _part_prefix(path: str) -> str:
    return next((p for p in PARTS if p and path.startswith(p)), "")


def new_parameters(config: ml_collections.ConfigDict, seed: int) -> dict[str, np.ndarray]:
    """Flat {"a/b": array} of the parameters only Omni-Emotion has, from their initialisers.

    `init` runs a method that calls just those submodules, so nothing of the 8B model is built."""
    model = registry.build(registry.FAMILIES["omni_emotion"], config)

    def touch(module: nn.Module) -> None:
        module.audio_projector(jnp.zeros((1, config.audio_pool, config.audio.hidden_size)))
        if config.fusion == "frame_cross_attention":
            tokens = jnp.zeros((1, 1, config.text.hidden_size))
            module.face_cross_attention(tokens, tokens)

    params = nn.unbox(model.init(jax.random.key(seed), method=touch)["params"])
    return {path: np.asarray(v) for path, v in flat_leaves(params).items()}


def _plan(
    parts: dict[str, Path], config: ml_collections.ConfigDict
) -> tuple[list[tuple[str, Any, str | None, Any]], list[str]]:
    """(target path, target ShapeDtypeStruct, part prefix and stored metadata, or None for a new
    parameter) per leaf, and every problem found (types, shapes, missing, unexpected)."""
    problems, stored = [], {}
    for prefix, path in parts.items():
        model_type = read_config(path)["model_type"]
        if model_type != PARTS[prefix]:
            problems.append(f"{path} holds a {model_type!r} checkpoint; expected {PARTS[prefix]!r}")
        else:
            stored[prefix] = stored_leaves(path / PARAMS_DIR)
    if problems:
        return [], problems
    plan, used = [], {prefix: set() for prefix in parts}
    for path, spec in abstract_params(registry.FAMILIES["omni_emotion"], config).items():
        prefix = _part_prefix(path)
        source = path[len(prefix):]
        meta = stored[prefix].get(source)
        if meta is None:
            plan.append((path, spec, None, None))
            continue
        used[prefix].add(source)
        expected, found = tuple(spec.shape), tuple(meta.shape)
        axis = TOKEN_TABLES.get(path)
        grows = axis is not None and found[:axis] + found[axis + 1:] == expected[:axis] + expected[axis + 1:] \
            and found[axis] <= expected[axis]
        if found != expected and not grows:
            problems.append(f"shape mismatch for {path!r} (from {parts[prefix]}): expected {list(expected)}, "
                            f"found {list(found)}")
        plan.append((path, spec, prefix, meta))
    for prefix, leaves in stored.items():
        problems += [f"unexpected {key!r} in {parts[prefix]}: the assembled model has no {prefix + key!r}"
                     for key in sorted(leaves.keys() - used[prefix])]
    return plan, problems


def assemble_omni_emotion(llava: str | os.PathLike, whisper: str | os.PathLike, face: str | os.PathLike,
                          dst: str | os.PathLike, config: ml_collections.ConfigDict, seed: int = 0,
                          dtype: str | None = None, progress: Progress = QUIET) -> Path:
    """Writes the Omni-Emotion checkpoint of `config` at `dst` from converted LLaVA-OneVision,
    Whisper and FaceXFormer directories. Every mismatch is listed before anything is written."""
    config = ml_collections.ConfigDict(config)
    parts = {"": Path(llava), "audio_encoder/": Path(whisper), "face_encoder/": Path(face)}
    plan, problems = _plan(parts, config)
    new = new_parameters(config, seed)
    problems += [f"parameter {path!r} {list(spec.shape)} is in no part and has no initialiser"
                 for path, spec, prefix, _ in plan if prefix is None and path not in new]
    if problems:
        raise ConversionError("the Omni-Emotion parts", problems)
    token_ids = [config[field] for field in SPECIAL_TOKENS]
    meta = {"model_type": "omni_emotion", "config": config.to_dict(), "hf_config": {}, "source_format": "assembled",
            "dtype": dtype or "source", "parts": {PARTS[p]: str(path) for p, path in parts.items()}, "seed": seed}
    with checkpoint_writer(dst, meta, side_files=lambda tmp: copy_side_files(parts[""], tmp)) as save, \
            progress.bar(total=len(plan), unit="leaf", desc="assembling") as bar:
        for path, spec, prefix, stored in plan:
            value = new[path] if prefix is None else load_leaf(parts[prefix] / PARAMS_DIR, path[len(prefix):], stored)
            if path in TOKEN_TABLES:
                axis = TOKEN_TABLES[path]
                value = fill_token_rows(value, token_ids, min(token_ids), axis, rows=spec.shape[axis])
            save(path, np.asarray(value, DTYPES[dtype] if dtype else None))
            bar.update()
    return Path(dst)
