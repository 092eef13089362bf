"""`omni-jax manifest`: a benchmark's labels and media → a manifest of one phase (docs/data.md).

    cfg = load_config("manifest")            # cfg.manifest: phase, split, fold, classes; cfg.evals
    cfg.manifest.update(split="test", fold=1)
    summary = run(cfg, format="dfew", labels="EmoLabel_DataSplit", media="Clip/original", out="dfew_test.jsonl")

Every row of the labels is read (a malformed one is an InputError naming its line, and nothing
is written); a row whose media is missing under --media, or that the phase cannot use (an
audio-only file for a video question), is skipped and counted by reason. The lines are written
under a temporary name and renamed into place; an existing OUT is refused.
"""
from __future__ import annotations

import collections
import json
import os
from glob import escape
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import ml_collections

from omni_jax.config_flags import Range, check_ranges
from omni_jax.data.manifest import turns
from omni_jax.errors import InputError, MissingInputError, OutputExistsError
from omni_jax.manifests import formats, readers
from omni_jax.manifests.readers import Row
from omni_jax.manifests.vocabulary import Vocabulary
from omni_jax.process_files import write_jsonl
from omni_jax.progress import QUIET, Progress

PHASES = ("eval", "face_alignment", "audio_alignment", "instruction_tuning")
SHOWN = 3  # skipped rows the summary names


class Skip(Exception):
    """A row this phase cannot use: `reason` counts it."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def find_media(media: Path, candidates: tuple[str, ...]) -> Path | None:
    """The first candidate that is a file under `media`; a candidate that is not also finds
    the file of that name with any extension (`00001` finds 00001.mp4)."""
    for name in candidates:
        path = media / name
        if path.is_file():
            return path
        found = sorted(p for p in path.parent.glob(escape(path.name) + ".*") if p.is_file())
        if found:
            return found[0]
    return None


def read_classes(path: Path) -> dict[str, str]:
    """manifest.classes: a JSON object, class token (a number or the dataset's word) → name."""
    try:
        table = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise InputError(f"{path}:{error.lineno}: not JSON ({error.msg})") from None
    if not isinstance(table, dict) or not table:
        raise InputError(f"{path}: expected a JSON object of class token → name, e.g. {{\"1\": \"happy\"}}, found "
                         f"{type(table).__name__}")
    for key, name in table.items():
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{path}: key {key!r}: expected a class name, found {name!r}")
    return {key.strip().lower(): name for key, name in table.items()}


def _label(row: Row, names: Mapping[str, str], name: str) -> str | None:
    if row.label is None:
        return None
    token = row.label.strip().lower()
    if token not in names:
        raise InputError(f"{row.where}: class {row.label!r} is not in {name}'s table (expected one of "
                         f"{sorted(names)}; --config.manifest.classes=FILE.json gives another)")
    return names[token]


def _path(path: Path, folder: Path) -> str:
    """Relative to the manifest's folder when under it (the manifest reader resolves it there)."""
    return path.relative_to(folder).as_posix() if path.is_relative_to(folder) else str(path)


def instructions(vocabulary: Vocabulary, question: str | None, label: str | None, description: str | None,
                 labels: Sequence[str]) -> list[tuple[str, list[dict[str, str]]]]:
    """Phase 3's conversations about one clip (the paper's Fig. 1), (kind, turns) for each answer
    there is: "classify" (`question` → the label), "describe" (→ the description),
    "open_vocabulary" (→ the emotion words)."""
    asked = {"classify": (question, label), "describe": (vocabulary.describe, description),
             "open_vocabulary": (vocabulary.open_vocabulary, ", ".join(labels) or None)}
    return [(kind, turns(q, answer)) for kind, (q, answer) in asked.items() if answer is not None]


class Lines:
    """The lines each phase makes of one row, whose clip is at `path` (as the manifest writes
    it) and whose class is `label` (the project's name, or None)."""

    def __init__(self, source: str, vocabulary: Vocabulary, asks: str, question: str | None):
        # question: the classification question over the format's own classes
        self.source, self.vocabulary, self.asks, self.question = source, vocabulary, asks, question

    def eval(self, row: Row, path: str, label: str | None) -> list[dict[str, Any]]:
        references = {"label": label, "labels": list(row.labels) or None, "description": row.description}
        return [{**self._clip(row, path), **{k: v for k, v in references.items() if v is not None}, **row.extra}]

    def face_alignment(self, row: Row, path: str, label: str | None) -> list[dict[str, Any]]:
        self._video(row)
        if label is None:
            raise Skip("no_label", f"{row.where}: {row.id}: no class label to answer")
        return [{**self._clip(row, path), **row.extra, "conversations": turns(self.question, label)}]

    def audio_alignment(self, row: Row, path: str, label: str | None) -> list[dict[str, Any]]:
        if not row.has_audio:
            raise Skip("no_audio", f"{row.where}: {row.id}: a file without sound")
        # a clip's own track is heard through `audio` too: phase 1's lines are audio-only
        return [{**self._clip(row, path, "audio"), **row.extra, "conversations": turns(self.asks, row.text, "<audio>")}]

    def instruction_tuning(self, row: Row, path: str, label: str | None) -> list[dict[str, Any]]:
        self._video(row)
        lines = [{**self._clip(row, path), "id": f"{row.id}:{kind}", **row.extra, "conversations": conversation}
                 for kind, conversation in instructions(self.vocabulary, self.question, label, row.description,
                                                        row.labels)]
        if not lines:
            raise Skip("no_answer", f"{row.where}: {row.id}: no label, labels or description to answer with")
        return lines

    def _clip(self, row: Row, path: str, key: str | None = None) -> dict[str, Any]:
        return {"id": row.id, key or row.kind: path, "source": self.source}

    @staticmethod
    def _video(row: Row) -> None:
        if row.kind != "video":
            raise Skip("no_video", f"{row.where}: {row.id}: an audio-only file, no video to ask about")


def _checked(labels: Path, media: Path, out: Path) -> None:
    if out.exists():
        raise OutputExistsError(f"{out} already exists; choose a new output file")
    if not labels.exists():
        raise MissingInputError(f"--labels {labels}: no such file or folder")
    if not media.is_dir():
        raise MissingInputError(f"--media {media}: no such folder")


def _names(name: str, classes: str | os.PathLike | None, vocabulary: Vocabulary) -> dict[str, str]:
    """Class token → the project's name: the format's table, or manifest.classes in its place."""
    table = formats.get(name).table
    if classes and table is None:
        raise InputError(f"--config.manifest.classes={classes}: {name} has no class labels to name")
    table = read_classes(Path(classes)) if classes else table or {}
    return {token: vocabulary.class_name(word) for token, word in table.items()}


Build = Callable[[Row, str, str | None], list[dict[str, Any]]]  # a phase's Lines method


def _collect(rows: Iterable[Row], names: Mapping[str, str], name: str, media: Path, folder: Path,
             build: Build) -> tuple[list[dict[str, Any]], list[tuple[str, str]], collections.Counter, int]:
    """(lines, skips as (reason, message), rows written by label, rows read) of `rows`, their
    clips written relative to `folder` where they lie under it."""
    lines, skips, by_label, count = [], [], collections.Counter(), 0
    for row in rows:
        count += 1
        label, path = _label(row, names, name), find_media(media, row.media)
        try:
            if path is None:
                raise Skip("missing_media", f"{row.where}: {row.id}: no {' or '.join(row.media)} under {media}")
            lines += build(row, _path(path, folder), label)
        except Skip as skip:
            skips.append((skip.reason, str(skip)))
            continue
        if label is not None:
            by_label[label] += 1
    return lines, skips, by_label, count


def run(cfg: ml_collections.ConfigDict, *, format: str, labels: str | os.PathLike, media: str | os.PathLike,
        out: str | os.PathLike, progress: Progress = QUIET) -> dict[str, Any]:
    """Writes `out`, the manifest of `format`'s labels for cfg.manifest.phase (default: the
    format's first), in the classes and questions of cfg.evals; returns the summary: lines
    written, rows read, skipped by reason (and the first few), rows written by label."""
    name, settings = format, cfg.manifest
    check_ranges(cfg, {"manifest.fold": Range(0, 5), "manifest.phase": ("", *PHASES)})
    form = formats.get(name)
    phase = settings.phase or form.phases[0]
    if phase not in form.phases:
        raise InputError(f"--config.manifest.phase={phase}: {name} can write {list(form.phases)}")
    labels, media, out = Path(labels).absolute(), Path(media).absolute(), Path(out).absolute()
    _checked(labels, media, out)
    vocabulary = Vocabulary.from_evals(cfg.evals)
    names = _names(name, settings.classes, vocabulary)
    build = getattr(Lines(name, vocabulary, form.asks, vocabulary.options(names.values()) if names else None), phase)
    located = formats.locate(name, labels, settings.split or None, settings.fold or None)
    rows = form.read(located, labels)
    with progress.stage(f"reading {name}'s labels"):
        lines, skips, by_label, count = _collect(rows, names, name, media, out.parent, build)
    if not lines:
        raise InputError(f"{name}: none of the {count} rows of {labels} made a line: "
                         + ("; ".join(m for _, m in skips[:SHOWN]) or "the labels name no clip"))
    write_jsonl(out, lines)
    return {"out": str(out), "format": name, "phase": phase, "lines": len(lines), "rows": count,
            "skipped": dict(sorted(collections.Counter(r for r, _ in skips).items())),
            "first_skipped": [m for _, m in skips[:SHOWN]], "labels": dict(sorted(by_label.items())),
            **({"labels_encoding": readers.ENCODING_NAMES[readers.text_encoding(located, form.encodings)]}
               if form.encodings else {})}
