"""One reader per public layout: a labels file (or folder) → `Row`s, one per clip it names.

A reader reads the dataset's own words and numbers; the format's table (`formats.FORMATS`)
turns a class token into a name and the job finds the media and writes the lines. A row the
reader cannot read is the user's file being wrong: an InputError naming the file and the line
(or the file, for layouts without lines), what was expected and what was found.

    read(path, root) → Iterator[Row]
    path: the labels file (or folder) of the chosen split; root: --labels as given, against
    which the folder layouts (caer, ravdess) name their media.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

from omni_jax.errors import InputError, MissingInputError


@dataclasses.dataclass(frozen=True)
class Row:
    """One clip a labels file names.

    media: paths relative to --media, the first that exists is the clip (one without an
    extension: any file of that name and an extension); kind: the manifest key the clip goes
    under ("video" or "audio"); label: the dataset's class token (the format's table names
    it); labels: open-vocabulary words; text: what is said or heard (phase 1's answer);
    has_audio: False for a file without sound (RAVDESS's video-only); extra: other
    annotations, copied into the lines."""

    id: str
    where: str  # "labels.csv:12" (or the file or folder), for messages
    media: tuple[str, ...]
    kind: str = "video"
    label: str | None = None
    labels: tuple[str, ...] = ()
    description: str | None = None
    text: str | None = None
    has_audio: bool = True
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def _open(path: Path):
    # utf-8-sig: CSVs saved by spreadsheet programs start with a byte-order mark
    return path.open(newline="", encoding="utf-8-sig")


def _records(path: Path, required: Sequence[str], delimiter: str = ",",
             quoting: int = csv.QUOTE_MINIMAL) -> Iterator[tuple[str, dict[str, str]]]:
    """("file:line", row) for each data row of a CSV/TSV with a header that has `required`."""
    try:
        with _open(path) as f:
            reader = csv.DictReader(f, delimiter=delimiter, quoting=quoting)
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                raise InputError(f"{path}:1: the header has no {missing} column (expected {list(required)} among "
                                 f"the columns, found {header})")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if None in row or None in row.values():  # more or fewer fields than the header
                    found = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None, ()))
                    raise InputError(f"{where}: expected {len(header)} fields {header}, found {found}")
                yield where, row
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text ({error})") from None


def _header(path: Path) -> list[str]:
    try:
        with _open(path) as f:
            return next(csv.reader(f), [])
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text ({error})") from None


# The encodings a labels file may be in, by the name a summary gives them. GB18030 is the
# superset of GBK (and of GB2312, which MAFW's captions exceed) that Python decodes GBK files with.
ENCODING_NAMES = {"utf-8-sig": "UTF-8", "gb18030": "GBK"}
UTF8 = ("utf-8-sig",)
MAFW_ENCODINGS = ("utf-8-sig", "gb18030")  # MAFW's captioned lists are GBK, its others ASCII


def _decoded(path: Path, encodings: Sequence[str]) -> tuple[str, str]:
    """(the first of `encodings` that decodes the whole of `path`, the text); an InputError naming them if none does."""
    data = path.read_bytes()
    for encoding in encodings:
        try:
            return encoding, data.decode(encoding)
        except UnicodeDecodeError as error:
            failure = error
    raise InputError(f"{path}: not {' or '.join(ENCODING_NAMES[e] for e in encodings)} text ({failure})")


def text_encoding(path: Path, encodings: Sequence[str] = UTF8) -> str:
    """The first of `encodings` that decodes the whole of `path`; an InputError naming them if none does."""
    return _decoded(path, encodings)[0]


def _lines(path: Path, encodings: Sequence[str] = UTF8) -> Iterator[tuple[str, str]]:
    """("file:line", text) for each non-blank line, in the first of `encodings` that decodes the file
    (read and decoded once; lines split as a text file's are)."""
    for number, line in enumerate(io.StringIO(_decoded(path, encodings)[1], newline=None), 1):
        if line.strip():
            yield f"{path}:{number}", line.strip()


def _fields(text: str, names: Sequence[str], where: str) -> list[str]:
    fields = text.split()
    if len(fields) != len(names):
        raise InputError(f"{where}: expected {len(names)} fields separated by spaces ({' '.join(names)}), found "
                         f"{len(fields)}: {text!r:.120}")
    return fields


def _field(row: dict[str, str], key: str, where: str) -> str:
    value = row[key].strip()
    if not value:
        raise InputError(f"{where}: {key!r} is empty")
    return value


def _number(row: dict[str, str], key: str, where: str) -> float:
    try:
        return float(row[key])
    except ValueError:
        raise InputError(f"{where}: {key!r} is a number, found {row[key]!r}") from None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise InputError(f"{path}:{error.lineno}: not JSON ({error.msg})") from None
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text ({error})") from None


def _files(path: Path, pattern: str) -> list[Path]:
    """`path` itself, or the files of folder `path` matching `pattern` (at least one)."""
    if path.is_file():
        return [path]
    files = sorted(p for p in path.glob(pattern) if p.is_file())
    if not files:
        raise MissingInputError(f"{path}: no {pattern} file in this folder")
    return files


def read_dfew(path: Path, root: Path) -> Iterator[Row]:
    """A fold's CSV, `video_name,label`: the clip's number (00001.mp4 is 1) and its class 1–7."""
    for where, row in _records(path, ("video_name", "label")):
        name = _field(row, "video_name", where)
        if not name.isdigit():
            raise InputError(f"{where}: 'video_name' is a clip number (1, 2, ...), found {name!r}")
        yield Row(id=f"{int(name):05d}", where=where, media=(f"{int(name):05d}", name),
                  label=_field(row, "label", where))


def read_mafw(path: Path, root: Path) -> Iterator[Row]:
    """A set list as MAFW ships them (`Train & Test Set/single/{no_caption,with_caption}/set_N/
    {train,test}.txt`, UTF-8 or GBK): `CLIP LABEL` separated by a space (`00025.mp4 anger`), or
    tab-separated `CLIP LABEL [CHINESE ENGLISH]` with the two captions (MAFW's README writes
    the clip and label of its caption list apart with spaces and `&emsp;`). The English caption
    becomes the description, the Chinese one the line's `caption_zh`."""
    for where, text in _lines(path, MAFW_ENCODINGS):
        fields = [field.strip() for field in text.split("\t")]
        head = fields[0].replace("&emsp;", " ").split()
        if len(head) == 2:  # the clip and its label before the first tab (or no tab at all)
            fields[:1] = head
        elif "\t" not in text:
            _fields(text, ("CLIP", "LABEL"), where)  # raises, naming what it found
        if len(fields) not in (2, 4) or not all(fields[:2]):
            raise InputError(f"{where}: expected CLIP LABEL, or tab-separated CLIP LABEL CHINESE ENGLISH, found "
                             f"{len(fields)} fields: {text!r:.120}")
        clip, label, *captions = fields
        yield Row(id=Path(clip).stem, where=where, media=(clip, Path(clip).stem), label=label,
                  description=captions[1] if captions and captions[1] else None,
                  extra={"caption_zh": captions[0]} if captions and captions[0] else {})


def read_ferv39k(path: Path, root: Path) -> Iterator[Row]:
    """A setup's list, `SCENE/CLASS/CLIP LABEL` a line (`Action/Sad/0010 Sad`)."""
    for where, text in _lines(path):
        clip, label = _fields(text, ("PATH", "LABEL"), where)
        yield Row(id=clip, where=where, media=(clip,), label=label, extra={"scene": clip.split("/")[0]})


def read_mer(path: Path, root: Path) -> Iterator[Row]:
    """MERTools' label CSV: `name,discrete[,valence]` (MER2023's test3 has no valence)."""
    for where, row in _records(path, ("name", "discrete")):
        name = _field(row, "name", where)
        extra = {"valence": _number(row, "valence", where)} if (row.get("valence") or "").strip() else {}
        yield Row(id=name, where=where, media=(name,), label=_field(row, "discrete", where), extra=extra)


def read_caer(path: Path, root: Path) -> Iterator[Row]:
    """A split's folder of class folders of clips: `train/Anger/0001.avi`."""
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError(f"{path}: no class folders (expected CLASS/CLIP files, e.g. Anger/0001.avi)")
    for folder in classes:
        for clip in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            relative = clip.relative_to(root)
            yield Row(id=relative.with_suffix("").as_posix(), where=str(folder), media=(relative.as_posix(),),
                      label=folder.name)


def _frames(annotation: Any, path: Path) -> dict[str, dict[str, Any]]:
    frames = annotation.get("frames") if isinstance(annotation, dict) else None
    if not isinstance(frames, dict) or not frames:
        raise InputError(f"{path}: expected an object with 'frames' {{frame: {{valence, arousal, ...}}}}, found "
                         f"{type(frames).__name__ if isinstance(annotation, dict) else type(annotation).__name__}")
    for frame, values in frames.items():
        for key in ("valence", "arousal"):
            value = values.get(key) if isinstance(values, dict) else None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"{path}: frames.{frame}.{key} is a number, found {value!r}")
    return frames


def read_afew_va(path: Path, root: Path) -> Iterator[Row]:
    """Clip folders `001/` holding `001.json`, {"frames": {"00000": {"valence", "arousal",
    "landmarks"}, ...}, "actor", "video_id"}: per-frame valence and arousal (−10 to 10)."""
    annotations = sorted(path.glob("*/*.json"))
    if not annotations:
        raise MissingInputError(f"{path}: no CLIP/CLIP.json annotation (e.g. 001/001.json) in this folder")
    for annotation_path in annotations:
        annotation = _json(annotation_path)
        frames = _frames(annotation, annotation_path)
        order = sorted(frames)
        extra = {"valence": [frames[f]["valence"] for f in order], "arousal": [frames[f]["arousal"] for f in order]}
        if annotation.get("actor") is not None:
            extra["actor"] = annotation["actor"]
        yield Row(id=annotation_path.stem, where=str(annotation_path), media=(annotation_path.stem,), extra=extra)


# RAVDESS's file name: modality-vocal channel-emotion-intensity-statement-repetition-actor
RAVDESS_NAME = re.compile(r"\d\d(-\d\d){6}")
RAVDESS_FIELDS = {
    "modality": {"01": "full-av", "02": "video-only", "03": "audio-only"},
    "vocal_channel": {"01": "speech", "02": "song"},
    "intensity": {"01": "normal", "02": "strong"},
    "statement": {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"},
}


def _ravdess_code(codes: dict[str, str], field: str, clip: Path) -> str:
    words = RAVDESS_FIELDS[field]
    if codes[field] not in words:
        raise InputError(f"{clip}: the {field} code is one of {sorted(words)}, found {codes[field]!r}")
    return words[codes[field]]


def read_ravdess(path: Path, root: Path) -> Iterator[Row]:
    """Actor folders of files named by their labels, `Actor_01/01-01-06-01-02-01-01.mp4`."""
    clips = sorted(p for p in path.rglob("*") if p.is_file() and RAVDESS_NAME.fullmatch(p.stem))
    if not clips:
        raise MissingInputError(f"{path}: no RAVDESS file (named like 01-01-06-01-02-01-12.mp4) under this folder")
    for clip in clips:
        codes = dict(zip(("modality", "vocal_channel", "emotion", "intensity", "statement", "repetition", "actor"),
                         clip.stem.split("-")))
        words = {field: _ravdess_code(codes, field, clip) for field in RAVDESS_FIELDS}
        yield Row(id=clip.stem, where=str(clip), media=(clip.relative_to(root).as_posix(),),
                  kind="audio" if codes["modality"] == "03" else "video", label=codes["emotion"],
                  text=words["statement"], has_audio=codes["modality"] != "02",
                  extra={**words, "repetition": int(codes["repetition"]), "actor": int(codes["actor"])})


# EMER's and OV-MERD's CSVs: the column of each thing, by the names the releases use
EMER_COLUMNS = {"id": ("name", "names"), "description": ("english", "reason", "reasons"), "labels": ("openset",)}


def _column(header: Sequence[str], thing: str) -> str | None:
    return next((c for c in EMER_COLUMNS[thing] if c in header), None)


def _words(cell: str) -> tuple[str, ...]:
    """"['happy', 'relieved']" or "happy, relieved" → ("happy", "relieved"); none → neutral,
    as MERTools' OV-MERD reader takes an empty set."""
    words = (w.strip().strip("'\"").strip().lower() for w in cell.strip().strip("[]").split(","))
    return tuple(w for w in words if w) or ("neutral",)


def _emer_file(path: Path) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(id, where, {"description"?, "labels"?}) for each row of one EMER CSV."""
    header = _header(path)
    key, described, labelled = (_column(header, thing) for thing in ("id", "description", "labels"))
    if key is None or (described is None and labelled is None):
        raise InputError(f"{path}:1: expected a {'/'.join(EMER_COLUMNS['id'])} column and a description "
                         f"({'/'.join(EMER_COLUMNS['description'])}) or open-vocabulary "
                         f"({'/'.join(EMER_COLUMNS['labels'])}) column, found {header}")
    for where, row in _records(path, (key,)):
        found = {}
        if described and row[described].strip():
            found["description"] = row[described].strip()
        if labelled:
            found["labels"] = _words(row[labelled])
        yield _field(row, key, where), where, found


def read_emer(path: Path, root: Path) -> Iterator[Row]:
    """EMER's descriptions (`final-EMER-reason.csv`: names, chinese, english) and
    open-vocabulary labels (OV-MERD's `openset` column): one CSV, or a folder of them merged by
    clip name."""
    clips: dict[str, dict[str, Any]] = {}
    for csv_path in _files(path, "*.csv"):
        for name, where, found in _emer_file(csv_path):
            clips.setdefault(name, {"where": where}).update(found)
    for name, found in clips.items():
        yield Row(id=name, where=found["where"], media=(name,), labels=found.get("labels", ()),
                  description=found.get("description"))


def read_commonvoice(path: Path, root: Path) -> Iterator[Row]:
    """A split's TSV (client_id, path, sentence, up_votes, ...); the audio is clips/PATH."""
    # QUOTE_NONE: sentences hold quotation marks, and Common Voice's TSVs quote nothing
    for where, row in _records(path, ("path", "sentence"), delimiter="\t", quoting=csv.QUOTE_NONE):
        clip = _field(row, "path", where)
        extra = {k: v for k, v in row.items() if k not in ("path", "sentence") and v.strip()}
        yield Row(id=Path(clip).stem, where=where, media=(f"clips/{clip}", clip), kind="audio",
                  text=_field(row, "sentence", where), extra=extra)


# WavCaps writes this placeholder where a subset's JSON has no audio path of its own
WAVCAPS_PLACEHOLDER = "wav_path"


def _wavcaps_entry(entry: Any, where: str) -> Row:
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), (str, int)) and str(entry[k]).strip()
                                              for k in ("id", "caption")):
        raise InputError(f"{where}: expected an object with 'id' and 'caption', found {str(entry)[:120]}")
    name = str(entry["id"]).strip()
    given = [entry[k] for k in ("wav_path", "audio") if isinstance(entry.get(k), str) and entry[k].strip()
             and entry[k] != WAVCAPS_PLACEHOLDER]
    extra = {k: v for k, v in entry.items() if k not in ("id", "caption", "wav_path", "audio")}
    return Row(id=name, where=where, media=(*given, name, Path(name).stem), kind="audio",
               text=str(entry["caption"]).strip(), extra=extra)


def read_wavcaps(path: Path, root: Path) -> Iterator[Row]:
    """A WavCaps JSON, {"data": [{"id", "caption", "audio" or "wav_path", "duration", ...}]},
    or a folder of them (one per subset)."""
    for json_path in _files(path, "*.json"):
        data = _json(json_path)
        entries = data.get("data") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise InputError(f"{json_path}: expected an object with a 'data' list of clips, found "
                             f"{type(data).__name__ if not isinstance(data, dict) else sorted(data)}")
        for index, entry in enumerate(entries):
            yield _wavcaps_entry(entry, f"{json_path}: data[{index}]")
