"""`omni-jax synth`: the demo's synthetic clips and manifests (--out), tiny stand-ins for the
7B's downloads (--parts), or both."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ml_collections

from omni_jax.config_flags import AT_LEAST_0, AT_LEAST_1, Range, check_ranges
from omni_jax.errors import InputError, OutputExistsError
from omni_jax.progress import QUIET, Progress

FIELDS = {"synth.clips": AT_LEAST_1, "synth.eval_clips": Range(0, none=True), "synth.seed": AT_LEAST_0}


def _new_folder(path: Path) -> Path:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise OutputExistsError(f"{path}: exists and is not empty (synth writes a new folder)")
    path.mkdir(parents=True, exist_ok=True)
    return path


def run(cfg: ml_collections.ConfigDict, *, out: str | os.PathLike | None = None,
        parts: str | os.PathLike | None = None, progress: Progress = QUIET) -> dict[str, Any]:
    """Writes `out` (clips, voices, the manifests of every phase: `synth.clips.synthesize`) and/or
    `parts` (`synth.parts.write_parts`, in the shapes of `cfg.model`)."""
    from omni_jax.synth import clips

    check_ranges(cfg, FIELDS)
    if out is None and parts is None:
        raise InputError("omni-jax synth writes --out DIR (clips and manifests), --parts DIR (stand-in parts), or both")
    settings, summary = cfg.synth, {}
    if out is not None:
        manifests = clips.synthesize(_new_folder(Path(out)), settings.clips, settings.eval_clips, settings.seed,
                                     progress)
        summary.update(out=str(out), **{name: str(path) for name, path in manifests.items()})
    if parts is not None:
        from omni_jax.synth.parts import write_parts

        summary.update(parts=str(parts), **write_parts(_new_folder(Path(parts)), cfg.model, settings.seed, progress))
    return summary
