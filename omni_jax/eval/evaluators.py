"""Evaluators named in the config, as big_vision's: `cfg.evals.NAME = dict(type=..., ...)`;
each takes a predict function and yields `(metric, value)` pairs.

    for name, evaluator in from_config(cfg.evals):
        for metric, value in evaluator.run(predict, out_dir): ...

predict(manifest, question) → this process's predictions (`eval.predict.Predictor`): the
evaluator merges every process's into `out_dir/predictions/NAME.jsonl` (manifest order, each
line with its per-clip scores, or its skip reason) and scores them; process 0 writes the
figures. The same evaluators run in `omni-jax eval` and inside `omni-jax train`
(`train.eval_every`). An evaluator whose manifest is unset is not built.

References are read and checked before anything is generated (a label outside the class
list, a line without references: a clear error naming the line, and nothing written), and so
are the media the lines name (`check_media`: missing or empty files, malformed lines). Lines
that cannot be used are skipped and counted (`skipped`, `skipped/REASON`) up to
`eval.max_skip_fraction` of the manifest; above it, or when no line can be used, the
evaluation fails with the reasons counted and the first files named, before the model loads
when the files alone tell, else before any predictions file is written.
"""
from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from omni_jax.data.manifest import ManifestSource, json_lines, too_many_skipped, unusable_lines
from omni_jax.endpoints import RequestFailure
from omni_jax.errors import InputError, MissingInputError, RunStopped
from omni_jax.eval import judge, scoring
from omni_jax.eval.predict import media_counts
from omni_jax.process_files import write_merged

Predict = Callable[..., list[dict[str, Any]]]  # predict(manifest, question, kept_in=None): eval.predict.Predictor


def _references(manifest: str, key: str, check: Callable[[Any, str], None]) -> None:
    """Checks every parseable line's reference `key` (lines that are not JSON objects are
    the pipeline's to skip and count)."""
    for number, entry in json_lines(manifest):
        where = f"{manifest}:{number}"
        if key not in entry:
            raise InputError(f"{where}: no {key!r}: an evaluation manifest line carries its reference")
        check(entry[key], where)


class Evaluator(abc.ABC):
    """Runs predict over the manifest, merges and scores the predictions; each kind says how to
    score (`score`) and what to report (`report`)."""

    name: str
    manifest: str
    question: str | None
    max_skip_fraction: float = 0.1  # eval.max_skip_fraction
    reference: str  # the manifest field that holds a line's reference

    @staticmethod
    @abc.abstractmethod
    def reference_check(name: str, **spec: Any) -> Callable[[Any, str], None]:
        """check(reference, "manifest:line") for the evaluator configured by `spec`: raises
        InputError naming the line for a reference it cannot score."""

    @classmethod
    def check_references(cls, name: str, manifest: str, **spec: Any) -> None:
        """Every line's reference, before anything is generated (or, in data-check, decoded)."""
        _references(manifest, cls.reference, cls.reference_check(name, **spec))

    @abc.abstractmethod
    def score(self, answered: list[dict[str, Any]]) -> dict[str, Any]:
        """The scores of the answered clips; adds each clip's own figures to its dict."""

    @abc.abstractmethod
    def report(self, scores: dict[str, Any], out_dir: Path) -> Iterator[tuple[str, Any]]:
        """(metric, value) pairs of `scores`; figures (PNGs) into `out_dir`."""

    def _scores(self, predictions: list[dict[str, Any]]) -> dict[str, Any]:
        return self.score([p for p in predictions if "skip" not in p])

    def _check_skips(self, skips: list[tuple[str, str]], skipped: int, total: int) -> None:
        """Fails when `skipped` of `total` lines is more than max_skip_fraction (or all);
        `skips`: (reason, message) of those this process knows."""
        failure = too_many_skipped(skips, total, self.max_skip_fraction, "eval.max_skip_fraction", skipped)
        if failure:
            raise RunStopped(f"evaluator {self.name!r} on {self.manifest}: {failure}")

    def progress_file(self, out_dir: Path) -> Path:
        """Where a resumable run keeps its answers (one file per process beside this name)."""
        return out_dir / "predictions" / f".{self.name}.progress"

    def check_media(self) -> None:
        """Before the model loads: the lines no decoding can use (missing or empty files,
        malformed lines) within max_skip_fraction."""
        source = ManifestSource(self.manifest, self.question)
        if not len(source):
            raise InputError(f"evaluator {self.name!r}: {self.manifest} holds no line")
        problems = unusable_lines(source)
        self._check_skips(problems, len(problems), len(source))

    def run(self, predict: Predict, out_dir: Path, resumable: bool = False) -> Iterator[tuple[str, Any]]:
        """resumable: the answers are kept batch by batch (`progress_file`), so a stopped run
        resumes; whoever runs it removes those files once every evaluator is done."""
        scores: dict[str, Any] = {}

        def annotate(merged: list[dict[str, Any]]) -> list[dict[str, Any]]:
            scores.update(self._scores(merged))  # process 0: the per-clip figures go into the file
            return merged

        predictions = predict(self.manifest, self.question, self.progress_file(out_dir) if resumable else None)
        skips = [(p["skip"], p["message"]) for p in predictions if "skip" in p]
        # every process decides on the same global counts (each holds its share of the lines)
        skipped, total = np.sum(multihost_utils.process_allgather(np.array([len(skips), len(predictions)])).reshape(
            -1, 2), axis=0).tolist()
        self._check_skips(skips, skipped, total)
        predictions = write_merged(predictions, out_dir / "predictions" / f"{self.name}.jsonl", annotate)
        scores = scores or self._scores(predictions)
        yield from self.report(scores, out_dir)
        yield "clips", len(predictions) - skipped
        yield "skipped", skipped
        for reason in sorted({p["skip"] for p in predictions if "skip" in p}):
            yield f"skipped/{reason}", sum(p.get("skip") == reason for p in predictions)
        yield from media_counts(predictions).items()


class EmotionClassification(Evaluator):
    """UAR, WAR, unmapped, HumanOmni's strict figures, recall per class, confusion-matrix PNG."""

    reference = "label"

    def __init__(self, name: str, manifest: str, classes: Sequence[str], question: str,
                 synonyms: Mapping[str, Sequence[str]] | None = None):
        self.name, self.manifest, self.question = name, manifest, question
        self.classes, self.synonyms = tuple(classes), {k: tuple(v) for k, v in (synonyms or {}).items()}
        self.check_references(name, manifest, classes=classes)

    @staticmethod
    def reference_check(name: str, classes: Sequence[str] = (), **_: Any) -> Callable[[Any, str], None]:
        def check(label: Any, where: str) -> None:
            if scoring.reference_class(label, classes) is None:  # "Angry" names angry, as an answer would
                raise InputError(f"{where}: {scoring.unknown_label(label, classes)} of evaluator {name!r}")
        return check

    def score(self, answered: list[dict[str, Any]]) -> dict[str, Any]:
        scores = scoring.classification_scores([p["answer"] for p in answered], [p["label"] for p in answered],
                                               self.classes, self.synonyms)
        for p, guess in zip(answered, scores["predicted"]):
            p.update(predicted=guess, correct=guess == scoring.reference_class(p["label"], self.classes))
        return scores

    def report(self, scores: dict[str, Any], out_dir: Path) -> Iterator[tuple[str, Any]]:
        if jax.process_index() == 0:
            plot_confusion(scores["confusion"], self.classes, out_dir / f"{self.name}_confusion.png", self.name)
        for key in ("uar", "war", "unmapped", "strict_uar", "strict_war"):
            yield key, scores[key]
        for cls, recall in scores["recall"].items():
            if recall is not None:
                yield f"recall/{cls}", recall


class OpenVocabulary(Evaluator):
    """EMER-OV precision, recall and their mean over grouped emotion words; grouping "table"
    (emotion_words.GROUPS) or "llm" (the judge endpoint groups each clip's true and predicted
    words; a clip whose grouping fails is counted in `grouping_failures`, not scored)."""

    GROUPINGS = ("table", "llm")
    reference = "labels"

    def __init__(self, name: str, manifest: str, question: str, grouping: str = "table",
                 endpoint: Mapping[str, Any] | None = None):
        if grouping not in self.GROUPINGS:
            raise InputError(f"evaluator {name!r}: grouping {grouping!r}; available: {self.GROUPINGS}")
        self.name, self.manifest, self.question = name, manifest, question
        self.table = scoring.word_groups()
        self.client = judge.judge_endpoint(endpoint) if grouping == "llm" else None
        self.check_references(name, manifest)

    @staticmethod
    def reference_check(name: str, **_: Any) -> Callable[[Any, str], None]:
        table = scoring.word_groups()

        def check(labels: Any, where: str) -> None:
            if not isinstance(labels, list) or not scoring.emotion_words(labels, table):
                raise InputError(f"{where}: 'labels' must be a list holding at least one emotion word, got "
                                 f"{labels!r:.80}")
        return check

    def score(self, answered: list[dict[str, Any]]) -> dict[str, Any]:
        for p in answered:
            p["words"] = scoring.emotion_words(p["answer"], self.table)
        group_of, failures = None, []
        if self.client is not None:  # clips merged from another process's file are grouped already
            todo = [p for p in answered if "groups" not in p and "grouping_failure" not in p]
            words = [sorted(set(scoring.emotion_words(p["labels"], self.table)) | set(p["words"])) for p in todo]
            groupings = self.client.ask_all([judge.GROUPING_PROMPT.format(words=json.dumps(w)) for w in words],
                                            [judge.grouping_parser(w) for w in words])
            for p, grouping in zip(todo, groupings):
                p.update({"grouping_failure": str(grouping)} if isinstance(grouping, RequestFailure)
                         else {"groups": grouping})
            failures = [p for p in answered if "grouping_failure" in p]
            answered = [p for p in answered if "groups" in p]
            in_order = iter([p["groups"] for p in answered])
            group_of = lambda true, predicted: next(in_order)  # open_vocabulary_scores asks clip by clip
        if not answered:
            raise RunStopped(f"evaluator {self.name!r}: no clip could be grouped ({failures[0]['grouping_failure']})")
        scores = scoring.open_vocabulary_scores([p["answer"] for p in answered], [p["labels"] for p in answered],
                                                group_of=group_of, table=self.table)
        for p, clip in zip(answered, scores["per_clip"]):
            p.update(clip)
        return {**scores, "grouping_failures": len(failures), **(self.client.figures() if self.client else {})}

    def report(self, scores: dict[str, Any], out_dir: Path) -> Iterator[tuple[str, Any]]:
        for key in ("precision", "recall", "avg"):
            yield key, scores[key]
        if self.client is not None:
            yield "grouping_failures", scores["grouping_failures"]
            yield from ((k, v) for k, v in scores.items() if k.startswith("judge_"))


class ReasoningJudge(Evaluator):
    """EMER's reasoning scores: the judge endpoint rates each answer against the line's
    `description` for clue overlap and label overlap (0-10), averaged over the judged clips;
    a clip whose replies never parse, or whose requests keep timing out or failing, is a
    `judge_failure`, counted and not scored; `judge_requests` and the tokens say what it cost."""

    reference = "description"

    def __init__(self, name: str, manifest: str, question: str, endpoint: Mapping[str, Any]):
        self.name, self.manifest, self.question = name, manifest, question
        self.client = judge.judge_endpoint(endpoint)  # a missing API key fails here, before any generation
        self.check_references(name, manifest)

    @staticmethod
    def reference_check(name: str, **_: Any) -> Callable[[Any, str], None]:
        def check(description: Any, where: str) -> None:
            if not isinstance(description, str) or not description.strip():
                raise InputError(f"{where}: 'description' must be the reference text, got {description!r:.80}")
        return check

    def score(self, answered: list[dict[str, Any]]) -> dict[str, Any]:
        todo = [p for p in answered if "clue_overlap" not in p and "judge_failure" not in p]
        replies = self.client.ask_all([judge.REASONING_PROMPT.format(reference=p["description"], answer=p["answer"])
                                       for p in todo], judge.parse_reasoning)
        for p, reply in zip(todo, replies):
            p.update({"judge_failure": str(reply)} if isinstance(reply, RequestFailure) else reply)
        judged = [p for p in answered if "clue_overlap" in p]
        mean = lambda key: float(np.mean([p[key] for p in judged])) if judged else None
        return {"clue_overlap": mean("clue_overlap"), "label_overlap": mean("label_overlap"), "judged": len(judged),
                "judge_failures": len(answered) - len(judged),
                **self.client.figures()}

    def report(self, scores: dict[str, Any], out_dir: Path) -> Iterator[tuple[str, Any]]:
        yield from scores.items()


EVALUATORS = {"emotion_classification": EmotionClassification, "open_vocabulary": OpenVocabulary,
              "reasoning_judge": ReasoningJudge}


def from_config(evals: ml_collections.ConfigDict, max_skip_fraction: float = 0.1) -> list[tuple[str, Any]]:
    """(name, evaluator) for every configured evaluator whose manifest is set, its references
    and media checked (`max_skip_fraction`: eval.max_skip_fraction)."""
    built = []
    for name, spec in evals.items():
        spec = spec.to_dict() if isinstance(spec, ml_collections.ConfigDict) else dict(spec)
        kind = spec.pop("type", None)
        if kind not in EVALUATORS:
            raise InputError(f"evals.{name}: type {kind!r}; available: {sorted(EVALUATORS)}")
        if spec.get("manifest"):
            if not epath.Path(spec["manifest"]).exists():
                raise MissingInputError(f"evals.{name}.manifest: {spec['manifest']}: no such file")
            evaluator = EVALUATORS[kind](name=name, **spec)
            evaluator.max_skip_fraction = max_skip_fraction
            evaluator.check_media()
            built.append((name, evaluator))
    return built


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: Path, title: str) -> None:
    """Confusion matrix [classes, classes + 1] (rows: reference, last column: unmapped) as a
    PNG, each row normalised to the share of its clips, with the counts written in."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 1.0 + 0.6 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(classes) + 1), [*classes, "unmapped"], rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("answer")
    ax.set_ylabel("reference")
    ax.set_title(title)
    for (row, column), count in np.ndenumerate(matrix):
        ax.text(column, row, str(count), ha="center", va="center",
                color="white" if shares[row, column] > 0.5 else "black", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the class's clips")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
