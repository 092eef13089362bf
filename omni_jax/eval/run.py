"""`omni-jax eval`, `omni-jax infer` and `omni-jax score`: the evaluators of a config on a
checkpoint, answers for clips, and metrics of a predictions file.

    omni-jax eval --config configs/omni_emotion.py:7b --checkpoint CKPT --workdir DIR \\
                  --config.evals.dfew.manifest=dfew_test.jsonl [--config.eval.modalities=v,a]

WORKDIR/predictions/NAME.jsonl (one line per manifest line: its answer and per-clip scores, or
why it was skipped), WORKDIR/NAME_confusion.png (classification), WORKDIR/metrics.json
({NAME: {metric: value}}). Sharded over cfg.mesh like training; multi-process as training.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import jax
import ml_collections
from jax.experimental import multihost_utils

from omni_jax.errors import InputError, MissingInputError
from omni_jax.eval import scoring
from omni_jax.eval.evaluators import from_config
from omni_jax.eval.predict import Predictor
from omni_jax.pretrained import load_pretrained
from omni_jax.runs import load_tokenizer, resolve_checkpoint, run_config
from omni_jax.sharding import make_mesh
from omni_jax.stopping import StopRequest

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")
DEFAULT_QUESTION = "How does the person in the video feel, and which cues in the face, voice and scene show it?"


def load_predictor(cfg: ml_collections.ConfigDict, checkpoint: str | os.PathLike,
                   model_overrides: Sequence[str] = ()) -> tuple[ml_collections.ConfigDict, Predictor]:
    """(the config as run, a Predictor) for an Omni-Emotion checkpoint or a finished workdir;
    `model_overrides`: the model fields the command line set (`runs.run_config`)."""
    path = resolve_checkpoint(checkpoint)
    if path is None:
        raise InputError("a checkpoint is required")
    cfg = run_config(cfg, path, model_overrides)
    tokenizer = load_tokenizer(cfg, path)
    mesh = make_mesh(**cfg.mesh)
    model, params = load_pretrained(path, dtype=cfg.eval.dtype, mesh=mesh, scan_layers=cfg.eval.scan_layers,
                                    attention_impl=cfg.eval.attention_impl)
    return cfg, Predictor(model, params, tokenizer, cfg, mesh)


def evaluate(cfg: ml_collections.ConfigDict, checkpoint: str | os.PathLike, workdir: str | os.PathLike,
             model_overrides: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Runs every configured evaluator (cfg.evals) on `checkpoint`; returns {NAME: {metric: value}}
    and writes the files the module docstring lists."""
    workdir = Path(workdir)
    evaluators = from_config(cfg.evals, cfg.eval.max_skip_fraction)  # references and media checked before the model loads
    if not evaluators:
        raise InputError(f"no evaluator has a manifest: set --config.evals.NAME.manifest=FILE.jsonl for one of "
                         f"{sorted(cfg.evals)}")
    cfg, predict = load_predictor(cfg, checkpoint, model_overrides)
    # SIGTERM or Ctrl-C stops after the current batch (Stopped); the rerun resumes there
    predict.resume_key = {"checkpoint": str(resolve_checkpoint(checkpoint))}
    results = {}
    with StopRequest("stopping after the current batch") as predict.stop:
        for name, evaluator in evaluators:
            results[name] = dict(evaluator.run(predict, workdir, resumable=True))
            log.info("%s: %s", name, ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in results[name].items()))
    if jax.process_index() == 0:
        tmp = workdir / ".metrics.json.tmp"
        tmp.write_text(json.dumps({"modalities": cfg.eval.modalities, **results}, indent=2))
        os.replace(tmp, workdir / "metrics.json")
    multihost_utils.sync_global_devices("evaluated: progress files no longer needed")
    for _, evaluator in evaluators:
        for record in evaluator.progress_file(workdir).parent.glob(f"{evaluator.progress_file(workdir).name}-*"):
            record.unlink(missing_ok=True)
    return results


def clip_lines(video: str | os.PathLike | None, audio: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Manifest lines for `infer`: one video (with an optional separate audio file), every
    video of a folder (sorted), or one audio file; paths absolute."""
    if video is None:
        if audio is None:
            raise InputError("give --video (a clip, a folder of clips or a manifest) or --audio")
        return [{"id": Path(audio).stem, "audio": str(Path(audio).absolute())}]
    path = Path(video)
    if not path.exists():
        raise MissingInputError(f"{path}: no such clip, folder or manifest")
    videos = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES) if path.is_dir() else [path]
    if not videos:
        raise MissingInputError(f"{path}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    voice = {"audio": str(Path(audio).absolute())} if audio else {}
    return [{"id": v.stem, "video": str(v.absolute()), **voice} for v in videos]


def infer(cfg: ml_collections.ConfigDict, checkpoint: str | os.PathLike, video: str | os.PathLike | None = None,
          audio: str | os.PathLike | None = None, question: str | None = None,
          model_overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Answers for a clip, a folder of clips, an audio file, or a manifest (`video` ending in
    .jsonl, read as the pipeline reads any manifest): each asked `question` (default: what the
    person feels and which cues show it) unless its line carries a conversation; decoded as in
    training (faces detected when no boxes are given)."""
    cfg, predict = load_predictor(cfg, checkpoint, model_overrides)
    question = question or DEFAULT_QUESTION
    if video is not None and str(video).endswith(".jsonl"):
        answers = predict(video, question)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            manifest = Path(tmp) / "clips.jsonl"
            manifest.write_text("".join(json.dumps(line) + "\n" for line in clip_lines(video, audio)))
            answers = predict(manifest, question)
    return [{k: v for k, v in a.items() if k not in ("line", "reference")} for a in answers]


def score(task: str, predictions: str | os.PathLike, classes: Sequence[str] | None = None,
          synonyms: dict[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """Metrics of a predictions file: `{"id", "answer", "label"}` lines (emotion_classification;
    classes default to the labels seen; `synonyms` as the evaluator's) or `{"id", "answer",
    "labels"}` (open_vocabulary: grouped by the table, or by the `groups` eval's judge gave every
    line). Lines with `skip` are counted, not scored."""
    path = Path(predictions)
    if not path.exists():
        raise MissingInputError(f"{path}: no such predictions file")
    lines = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            lines += [json.loads(line)] if line.strip() else []
        except json.JSONDecodeError as error:
            raise InputError(f"{path}:{number}: not JSON ({error})") from None
    answered = [p for p in lines if "skip" not in p]
    key = {"emotion_classification": "label", "open_vocabulary": "labels"}.get(task)
    if key is None:
        raise InputError(f"task {task!r}: choose emotion_classification or open_vocabulary")
    missing = [p.get("id", i) for i, p in enumerate(answered) if key not in p or "answer" not in p]
    if missing:
        raise InputError(f"{path}: lines without 'answer' or {key!r}: {missing[:5]}")
    if task == "emotion_classification":
        classes = list(classes or sorted({p["label"] for p in answered}))
        out = scoring.classification_scores([p["answer"] for p in answered], [p["label"] for p in answered],
                                            classes, synonyms)
        out = {k: out[k] for k in ("uar", "war", "unmapped", "strict_uar", "strict_war", "recall")}
    else:
        # eval's own file with the judge's grouping (grouping="llm") carries each clip's groups: the same figures
        groups = iter([p["groups"] for p in answered]) if all("groups" in p for p in answered) else None
        out = scoring.open_vocabulary_scores([p["answer"] for p in answered], [p["labels"] for p in answered],
                                             group_of=(lambda true, predicted: next(groups)) if groups else None)
        out = {k: out[k] for k in ("precision", "recall", "avg")}
    return {**out, "clips": len(answered), "skipped": len(lines) - len(answered)}
