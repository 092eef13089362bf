"""What every run (train, eval, infer) starts from: the checkpoint, the config as run, the tokenizer.

A run's config = `model` (from the checkpoint it starts from, which defines the architecture,
else the config file's) + the run's sections (data, train, eval, evals, mesh: from the config
file and the command line).
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import ml_collections

from omni_jax.checkpoint_dir import is_checkpoint, read_config
from omni_jax.errors import CheckpointRefused, InputError
from omni_jax.modality_tokens import add_special_tokens

log = logging.getLogger(__name__)

RUN_FILE = "config.json"  # a training workdir's record of its run
# Model fields a run from a checkpoint may set to another value (`--config.model.FIELD=…`): no
# parameter's shape or meaning depends on them. Any other model field is the checkpoint's.
FINE_TUNABLE = ("loss_chunk_size", "audio_windows")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def check_own_workdir(workdir: Path, record: str, what: str) -> None:
    """A workdir a job creates or resumes: a folder (not a file) that is new, holds no files (only
    empty folders, such as a bigger disk mounted at its checkpoints/), or holds the job's `record`
    (its resumable run); one holding other files is refused, not written into. (Hidden names are
    a writer's temporary ones: another process of the run writing its record.)"""
    if workdir.exists() and not workdir.is_dir():
        raise InputError(f"--workdir {workdir}: a file, where the {what}'s folder is expected")
    if workdir.is_dir() and not (workdir / record).exists() and any(
            not p.is_dir() and not any(part.startswith(".") for part in p.relative_to(workdir).parts)
            for p in workdir.rglob("*")):
        raise CheckpointRefused(f"--workdir {workdir}: holds files but no {what} ({record}); use a new --workdir "
                                "(nothing is overwritten)")


def resolve_checkpoint(checkpoint: str | os.PathLike | None) -> Path | None:
    """A checkpoint directory, or a finished phase's workdir (its final/)."""
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    if (path / RUN_FILE).exists() and not is_checkpoint(path):
        path = path / "final"
        if not path.exists():
            raise CheckpointRefused(f"{checkpoint}: a training workdir without final/ (the phase has not finished)")
    read_config(path)  # an omni_jax checkpoint, or a clear error
    return path


def run_config(cfg: ml_collections.ConfigDict, checkpoint: Path | None,
               model_overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The config as run. From a checkpoint, the model is the checkpoint's (it defines the
    architecture; `cfg.model`, the config file's, is what a run without one builds); of the
    fields the command line set (`model_overrides`: "text.rope_theta", ...), the FINE_TUNABLE
    ones are applied and any other that differs from the checkpoint's is refused, naming it.
    The pipeline's frame and pixel sizes follow the model."""
    run = ml_collections.ConfigDict(cfg.to_dict())
    if checkpoint is None:
        return run
    meta = read_config(checkpoint)
    if meta["model_type"] != "omni_emotion":
        raise CheckpointRefused(f"{checkpoint}: a {meta['model_type']} checkpoint; this takes an Omni-Emotion one "
                                "(omni-jax assemble builds it from converted parts)")
    model = ml_collections.ConfigDict(meta["config"])
    refused = []
    for field in model_overrides:
        value, stored = _field(cfg.model, field), _field(model, field)
        if value == stored:
            continue
        if field not in FINE_TUNABLE:
            refused.append(f"model.{field}={value!r} (the checkpoint's: {stored!r})")
            continue
        *parents, name = field.split(".")
        functools.reduce(lambda section, part: section[part], parents, model)[name] = value
        log.info("model.%s: %r (the checkpoint's %r)", field, value, stored)
    if refused:
        raise CheckpointRefused(f"{checkpoint} defines the model; a run from it may change only "
                                f"{', '.join(f'model.{f}' for f in FINE_TUNABLE)}, not {'; '.join(refused)}")
    run.model = model
    run.data.update(num_frames=model.num_frames, image_size=model.vision.image_size,
                    face_size=model.face.swin.image_size)
    return run


def _field(section: ml_collections.ConfigDict, dotted: str) -> Any:
    return functools.reduce(lambda s, part: s[part] if isinstance(s, ml_collections.ConfigDict) and part in s
                            else None, dotted.split("."), section)


def load_tokenizer(cfg: ml_collections.ConfigDict, checkpoint: Path | None) -> Any:
    """cfg.data.tokenizer, else the checkpoint's; with Omni-Emotion's tokens added."""
    from transformers import AutoTokenizer

    source = cfg.data.tokenizer or checkpoint
    if not source:
        raise InputError("no tokenizer: start from a checkpoint that carries one or set --config.data.tokenizer=DIR")
    path = Path(source)
    if not path.is_dir():
        raise InputError(f"{source}: the tokenizer is a folder (--config.data.tokenizer), and there is none here")
    if not any((path / name).exists() for name in TOKENIZER_FILES):
        raise InputError(f"{source}: no tokenizer in this folder (expected one of {', '.join(TOKENIZER_FILES)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as error:
        raise InputError(f"{source}: the tokenizer could not be read ({error})") from None
    add_special_tokens(tokenizer, cfg.model)
    return tokenizer
