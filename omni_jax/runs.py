"""What every run (train, eval, infer) starts from: the checkpoint, the config as run, the tokenizer.

A run's config = the model's fields (from the checkpoint it starts from, which defines the
architecture) + the run's sections (`RUN_SECTIONS`, from the config file and the command line).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import ml_collections

from omni_jax.conversion.engine import CONFIG_FILE, read_converted_config
from omni_jax.modality_tokens import add_special_tokens

log = logging.getLogger(__name__)

RUN_SECTIONS = ("data", "train", "eval", "evals", "mesh")
RUN_FILE = "config.json"  # a training workdir's record of its run


def model_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The model's fields of a run's config (without its run sections)."""
    return ml_collections.ConfigDict({k: v for k, v in cfg.to_dict().items() if k not in RUN_SECTIONS})


def resolve_checkpoint(checkpoint: str | os.PathLike | None) -> Path | None:
    """A checkpoint directory, or a finished phase's workdir (its final/)."""
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    if (path / RUN_FILE).exists() and not (path / CONFIG_FILE).exists():
        path = path / "final"
        if not path.exists():
            raise FileNotFoundError(f"{checkpoint}: a training workdir without final/ (the phase has not finished)")
    read_converted_config(path)  # an omni_jax checkpoint, or a clear error
    return path


def run_config(cfg: ml_collections.ConfigDict, checkpoint: Path | None) -> ml_collections.ConfigDict:
    """The config as run: the model's fields from `checkpoint` (it defines the architecture),
    the run's sections from `cfg`; the pipeline's frame and pixel sizes follow the model."""
    if checkpoint is None:
        return ml_collections.ConfigDict(cfg.to_dict())
    meta = read_converted_config(checkpoint)
    if meta["model_type"] != "omni_emotion":
        raise ValueError(f"{checkpoint}: a {meta['model_type']} checkpoint; this takes an Omni-Emotion one "
                         "(omni-jax assemble builds it from converted parts)")
    fields = {k: v for k, v in meta["config"].items() if k not in RUN_SECTIONS}
    changed = sorted(k for k, v in fields.items() if k in cfg and cfg[k] != v and not isinstance(v, dict))
    if changed:
        log.info("the model's fields come from %s; it differs from the config file in %s", checkpoint, changed)
    run = ml_collections.ConfigDict({**fields, **{k: cfg[k].to_dict() for k in RUN_SECTIONS}})
    run.data.update(num_frames=run.num_frames, image_size=run.vision.image_size, face_size=run.face.swin.image_size)
    return run


def load_tokenizer(cfg: ml_collections.ConfigDict, checkpoint: Path | None) -> Any:
    """cfg.data.tokenizer, else the checkpoint's; with Omni-Emotion's tokens added."""
    from transformers import AutoTokenizer

    source = cfg.data.tokenizer or checkpoint
    if not source:
        raise ValueError("no tokenizer: start from a checkpoint that carries one or set --config.data.tokenizer=DIR")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"{source}: no tokenizer could be read there ({error})") from None
    add_special_tokens(tokenizer, cfg)
    return tokenizer
