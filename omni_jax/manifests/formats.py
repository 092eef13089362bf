"""The public layouts `omni-jax manifest` reads, one declarative entry each (docs/data.md says
where each layout and table was taken from).

A format is its reader, the phases it can write (the first is its default), its class table
(the dataset's class token → the dataset's own word, lower case; `Vocabulary.class_name` then
gives the project's name), and, for a --labels folder, where the labels of --split and --fold
are under it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Iterator, Mapping

from omni_jax.errors import InputError, MissingInputError
from omni_jax.manifests import readers
from omni_jax.manifests.vocabulary import CAPTION, TRANSCRIBE

CLIP_PHASES = ("face_alignment", "eval", "instruction_tuning")


@dataclasses.dataclass(frozen=True)
class Format:
    """files: patterns of the labels file under a --labels folder, tried in order (fields
    {split} and {fold}); none: the folder (or file) itself is read. splits: the --split
    choices; folds: --fold is 1..folds (0: no folds). folder: --labels must be a folder.
    asks: phase 1's question (what `text` answers). encodings: where a labels file may be in
    several (readers.ENCODING_NAMES), those tried in order; the summary names the one found."""

    read: Callable[[Path, Path], Iterator[readers.Row]]
    phases: tuple[str, ...]
    table: Mapping[str, str] | None = None
    files: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()
    folds: int = 0
    folder: bool = False
    asks: str = TRANSCRIBE
    encodings: tuple[str, ...] = ()  # a labels file's encodings, tried in order (named in the summary)


# DFEW's numbers (its paper, and every baseline's loader: 1 happy ... 7 fear)
DFEW = {"1": "happy", "2": "sad", "3": "neutral", "4": "angry", "5": "surprise", "6": "disgust", "7": "fear"}
# MAFW's 11 single-expression words, as its set lists write them
MAFW = {w: w for w in ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise", "contempt",
                       "anxiety", "helplessness", "disappointment")}
# MAFW's set lists under the dataset's folder (or its `Train & Test Set`, as copies name it
# `Train_Test_Set`): the lists without captions first (only they hold the neutral clips), then
# the captioned ones; each also in the `_new` folders some copies have. A list's own `set_N`
# folder's parent (e.g. `.../with_caption`) picks one.
MAFW_LISTS = (*(f"{top}single/{kind}/set_{{fold}}/{{split}}.txt" for top in ("", "Train & Test Set/", "Train_Test_Set/")
                for kind in ("no_caption", "no_caption_new", "with_caption", "with_caption_new")),
              "set_{fold}/{split}.txt")
# FERV39K's lists and folders (Angry, Disgust, ...)
FERV39K = {w: w for w in ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")}
# CAER's class folders (its paper's names: Anger, Disgust, Fear, Happy, Neutral, Sad, Surprise)
CAER = {w: w for w in ("anger", "disgust", "fear", "happy", "neutral", "sad", "surprise")}
# MER2023's and MER2024's discrete labels (MERTools)
MER = {w: w for w in ("neutral", "angry", "happy", "sad", "worried", "surprise")}
# RAVDESS's emotion code (the third field of a file name)
RAVDESS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful",
           "07": "disgust", "08": "surprised"}

FORMATS: dict[str, Format] = {
    "dfew": Format(readers.read_dfew, ("eval", "face_alignment", "instruction_tuning"), DFEW,
                   files=("{split}(single-labeled)/set_{fold}.csv", "set_{fold}/{split}.csv"),
                   splits=("train", "test"), folds=5),
    "mafw": Format(readers.read_mafw, ("eval", "face_alignment", "instruction_tuning"), MAFW, files=MAFW_LISTS,
                   splits=("train", "test"), folds=5, encodings=readers.MAFW_ENCODINGS),
    "ferv39k": Format(readers.read_ferv39k, CLIP_PHASES, FERV39K,
                      files=("4_setups/All_scenes/{split}_All.csv", "All_scenes/{split}_All.csv", "{split}_All.csv"),
                      splits=("train", "test")),
    "mer2023": Format(readers.read_mer, CLIP_PHASES, MER, files=("{split}-label.csv",),
                      splits=("train", "test1", "test2", "test3")),
    "mer2024": Format(readers.read_mer, CLIP_PHASES, MER, files=("label-disdim.csv",)),
    "caer": Format(readers.read_caer, CLIP_PHASES, CAER, files=("{split}",), splits=("train", "validation", "test"),
                   folder=True),
    "afew_va": Format(readers.read_afew_va, ("eval",), folder=True),
    "ravdess": Format(readers.read_ravdess, (*CLIP_PHASES, "audio_alignment"), RAVDESS, folder=True),
    "emer": Format(readers.read_emer, ("instruction_tuning", "eval")),
    "commonvoice": Format(readers.read_commonvoice, ("audio_alignment",), files=("{split}.tsv",),
                          splits=("train", "dev", "test", "validated", "invalidated", "other")),
    "wavcaps": Format(readers.read_wavcaps, ("audio_alignment",), asks=CAPTION),
}


def get(name: str) -> Format:
    if name not in FORMATS:
        raise InputError(f"--format {name}: expected one of {sorted(FORMATS)}")
    return FORMATS[name]


def _chosen(name: str, value: object, choices: object, flag: str) -> None:
    if value is None:
        raise InputError(f"--format {name} with a --labels folder takes {flag} (one of {choices})")
    if value not in choices:
        raise InputError(f"{flag}={value}: {name} has {choices}")


def locate(name: str, labels: Path, split: str | None, fold: int | None) -> Path:
    """The labels file (or folder) of `split` and `fold` for --labels `labels`."""
    form = get(name)
    if labels.is_file() and form.folder:
        raise InputError(f"--labels {labels}: {name} reads a folder, not a file")
    chooses = labels.is_dir() and form.files
    for field, value, used in (("split", split, chooses and form.splits), ("fold", fold, chooses and form.folds)):
        if value is not None and not used:
            raise InputError(f"--config.manifest.{field}={value}: {name} with --labels {labels} has no {field}s to "
                             "choose from"
                             + (" (name the folder above the file instead)" if labels.is_file() and form.files else ""))
    if not chooses:
        return labels
    if form.splits:
        _chosen(name, split, form.splits, "--config.manifest.split")
    if form.folds:
        _chosen(name, fold, tuple(range(1, form.folds + 1)), "--config.manifest.fold")
    tried = [labels / pattern.format(split=split, fold=fold) for pattern in form.files]
    found = next((path for path in tried if path.exists()), None)
    if found is None:
        raise MissingInputError(f"--labels {labels}: no {' or '.join(str(p.relative_to(labels)) for p in tried)}")
    return found
