"""The JSONL manifest (docs/data.md) as a grain random-access data source.

One clip a line, LLaVA-style:

    {"id": "clip-1", "video": "clips/a.mp4", "audio": null, "faces": [[x0, y0, x1, y1], null, ...],
     "conversations": [{"from": "human", "value": "<video>\\nHow does she feel?"},
                       {"from": "gpt", "value": "Surprised."}]}

`video` (absent or null: an audio-only example if `audio` is given, else a text-only one),
`audio` (absent or null: the clip's own track) and relative paths resolve against the
manifest's folder; `gs://` and other remote paths go
through etils.epath (its filesystem backend must be installed). `faces` (boxes in pixels of
the source video) is null (the pipeline detects faces), boxes by time — `[{"t": seconds,
"box": [x0, y0, x1, y1] or null}, ...]` at any rate, e.g. a face tracker's, `t` the frame's
presentation time (ffprobe's pts_time; 0 at the first frame of most files); they survive a
change of `num_frames` — or one box or null per sampled frame (positional: valid only for the
`num_frames` it was made for).

Evaluation manifests may leave `conversations` out when the evaluator asks its own question
(`ManifestSource(path, question=...)`: one human turn, `<video>` or `<audio>` then the
question); their references (`label`, `labels`, a final gpt turn) stay on the Record.

The source indexes each line's byte offset once (8 bytes per clip, nothing parsed is held) and
reads a line on demand, under a lock (grain reads sources from a thread pool); worker processes
reopen the file after pickling. Parsing is separate (`parse_record`) so a malformed line becomes
an `ExampleError("malformed_json")` inside the transform, where the pipeline counts it, instead
of an exception in grain's sampler.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import threading
from typing import Any, Iterator, NamedTuple

import numpy as np
from etils import epath

from omni_jax.data.errors import ExampleError
from omni_jax.errors import MissingInputError


class ManifestLine(NamedTuple):
    number: int  # 1-based line number in the file, for messages
    text: bytes


@dataclasses.dataclass(frozen=True)
class Record:
    """One parsed manifest line; paths already resolved."""

    id: str
    video: epath.Path | None
    audio: epath.Path | None
    faces: tuple[tuple[float, float, float, float] | None, ...] | None  # one per entry of `faces`
    conversations: list[dict[str, Any]]
    where: str  # "manifest.jsonl:12", for skip messages
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # the line's other keys (label, labels, ...)
    face_times: tuple[float, ...] | None = None  # seconds of each box, when `faces` gives them by time


KEYS = ("id", "video", "audio", "faces", "conversations")  # what the pipeline reads; the rest is `extra`


def _index_lines(path: epath.Path) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets [lines] int64 and 1-based line numbers [lines] int64 of the non-blank lines."""
    starts, numbers, position = [], [], 0
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                starts.append(position), numbers.append(number)
            position += len(line)
    return np.asarray(starts, np.int64), np.asarray(numbers, np.int64)


class ManifestSource:
    """grain `RandomAccessDataSource` over a JSONL manifest: source[i] is the i-th line (ManifestLine).

    Blank lines are not examples; every other line is, including malformed ones (they are
    skipped later, counted as malformed_json).
    """

    def __init__(self, path: str | os.PathLike, question: str | None = None):
        self.path, self.question = epath.Path(path), question
        if not self.path.exists():
            raise MissingInputError(f"{self.path}: no such manifest")
        self._starts, self._numbers = _index_lines(self.path)
        self._file, self._lock = None, threading.Lock()

    def __len__(self) -> int:
        return len(self._numbers)

    def __getitem__(self, index: int) -> ManifestLine:
        # grain reads a source from a pool of threads, and a seek then a read share the file's
        # position: unlocked, a quarter of concurrent reads returned another thread's line.
        with self._lock:
            if self._file is None:
                self._file = self.path.open("rb")
            self._file.seek(int(self._starts[index]))
            return ManifestLine(int(self._numbers[index]), self._file.readline())

    def __getstate__(self) -> dict[str, Any]:
        # An open file and a lock do not cross into a worker process; each process makes its own.
        return {**self.__dict__, "_file": None, "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def __repr__(self) -> str:
        return f"ManifestSource({str(self.path)!r}, {len(self)} lines)"

    def parse(self, line: ManifestLine) -> Record:
        return parse_record(line, self.path, self.question)


def resolve(value: str, root: epath.Path) -> epath.Path:
    """A manifest path: absolute or remote (`gs://…`) as written, relative to `root` otherwise."""
    path = epath.Path(value)
    return path if "://" in value or path.is_absolute() else root / value


def _box(value: Any, where: str) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ExampleError("malformed_json", f"{where}: a face box is [x0, y0, x1, y1] or null, got {value!r}")
    return tuple(float(v) for v in value)


def _optional_str(entry: dict[str, Any], key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ExampleError("malformed_json", f"{where}: {key!r} must be a path or null, got {value!r}")
    return value


def turns(question: str, answer: str | None, marker: str = "<video>") -> list[dict[str, str]]:
    """A conversation: the human turn asking `question` after the media's `marker` ("<video>",
    "<audio>"; "" for none), then the answer's gpt turn unless `answer` is None."""
    human = [{"from": "human", "value": f"{marker}\n{question}" if marker else question}]
    return human + ([{"from": "gpt", "value": answer}] if answer is not None else [])


def parse_record(line: ManifestLine, manifest: epath.Path, question: str | None = None) -> Record:
    """A manifest line → Record; raises ExampleError("malformed_json") naming `manifest:line`.
    `question`: the human turn of a line without `conversations` (else they are required).

    Only the manifest's own structure is checked here; the conversation's content is the text
    module's to judge (bad_conversation, no_assistant_turn).
    """
    where = f"{manifest}:{line.number}"
    try:
        entry = json.loads(line.text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExampleError("malformed_json", f"{where}: not JSON ({error})") from None
    if not isinstance(entry, dict):
        raise ExampleError("malformed_json", f"{where}: a manifest line is a JSON object, got {type(entry).__name__}")
    video, audio = _optional_str(entry, "video", where), _optional_str(entry, "audio", where)
    conversations = entry.get("conversations")
    if conversations is None and question is not None:
        conversations = turns(question, None, "<video>" if video else "<audio>" if audio else "")
    if not isinstance(conversations, list):
        raise ExampleError("malformed_json", f"{where}: 'conversations' (a list of turns) is required")
    faces = entry.get("faces")
    if faces is not None and not isinstance(faces, list):
        raise ExampleError("malformed_json", f"{where}: 'faces' is a list of boxes (by time or per frame) or null")
    face_times = None
    if faces and all(isinstance(face, dict) for face in faces):
        face_times = tuple(_time(face, where) for face in faces)
        faces = [face.get("box") for face in faces]
    root = manifest.parent
    return Record(id=str(entry.get("id", f"{manifest.name}:{line.number}")),
                  video=resolve(video, root) if video else None,
                  audio=resolve(audio, root) if audio else None,
                  faces=None if faces is None else tuple(_box(box, where) for box in faces),
                  conversations=conversations, where=where,
                  extra={k: v for k, v in entry.items() if k not in KEYS}, face_times=face_times)


def _time(face: dict[str, Any], where: str) -> float:
    t = face.get("t")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0:
        raise ExampleError("malformed_json", f"{where}: a timed face is {{\"t\": seconds, \"box\": [x0, y0, x1, y1] "
                                             f"or null}}, got {face!r}")
    return float(t)


def json_lines(manifest: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each line of `manifest` that is a JSON object; the others are
    the pipeline's to skip and count."""
    with epath.Path(manifest).open() as lines:
        for number, line in enumerate(lines, 1):
            try:
                entry = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict):
                yield number, entry


def unusable_lines(source: ManifestSource) -> list[tuple[str, str]]:
    """(reason, message naming the file) for each line of `source` that no decoding can make
    an example of: malformed, or naming a video or audio file that is missing or empty. Reads
    no media (a look before a model is loaded; decoding finds the rest)."""
    problems = []
    for index in range(len(source)):
        try:
            record = source.parse(source[index])
            for path in (record.video, record.audio):
                if path is None:
                    continue
                if not path.exists():
                    raise ExampleError("missing_file", f"{record.where}: {path}: no such file")
                if path.stat().length == 0:
                    raise ExampleError("empty_file", f"{record.where}: {path}: an empty file (0 bytes)")
        except ExampleError as error:
            problems.append((error.reason, str(error)))
    return problems


def skip_summary(skips: list[tuple[str, str]], total: int, count: int | None = None, shown: int = 3,
                 what: str = "lines") -> str:
    """"2 of 3 lines cannot be used (missing_file 1, corrupt_video 1): first MESSAGE; MESSAGE".
    skips: (reason, message) of the lines known here; count: of all (default: len(skips))."""
    counts = collections.Counter(reason for reason, _ in skips)
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items()))
    return (f"{len(skips) if count is None else count} of {total} {what} cannot be used ({reasons}): first "
            + "; ".join(message for _, message in skips[:shown]))


def too_many_skipped(skips: list[tuple[str, str]], total: int, limit: float, field: str, count: int | None = None,
                     what: str = "lines") -> str | None:
    """`skip_summary` when every one of `total` items was skipped, or more than `limit` of them
    (`field` is the setting that allows more); None otherwise. What a job that did its work
    reports as its `error` (exit 1), and what an evaluator stops on."""
    count = len(skips) if count is None else count
    if not count or (count < total and count <= limit * total):
        return None
    return f"{skip_summary(skips, total, count, what=what)} ({field} is {limit:g}; set it higher to keep going)"
