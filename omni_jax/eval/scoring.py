"""The paper's metrics as pure NumPy functions of answers and references (no model).

Classification (DFEW, MAFW): an answer maps to one class (`map_answer`), then
  UAR = mean over the classes with references of that class's recall, WAR = accuracy;
  `unmapped` = answers naming no class or several (they count as wrong).
The strict figures reproduce HumanOmni's evaluation script, so numbers compare with published
ones: an answer is right only if it equals the label as a string (surrounding whitespace
aside); strict UAR is scikit-learn's `recall_score(average="macro")`, i.e. the mean recall
over the union of true and predicted strings (a predicted string that is no class adds a 0).

Open vocabulary (EMER-OV, MER2024): the emotion words of an answer (a list or free text) and
of the reference are mapped to groups; per clip precision = |G ∩ P| / |P| and recall =
|G ∩ P| / |G| (an answer with no emotion word scores 0 on both), averaged over clips;
avg = their mean.
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from omni_jax.errors import InputError
from omni_jax.eval.emotion_words import GROUPS

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def normalise(text: str) -> str:
    """Lower case, words only (punctuation and extra spaces dropped): "  Happy! " → "happy"."""
    return " ".join(_WORD.findall(text.lower()))


def _contains(text: str, phrase: str) -> bool:
    """Whether normalised `text` holds normalised `phrase` as whole words."""
    return f" {phrase} " in f" {text} "


# --------------------------------------------------------------------------- classification


def map_answer(answer: str, classes: Sequence[str], synonyms: Mapping[str, Sequence[str]] | None = None
               ) -> str | None:
    """The class an answer names, or None (no class, or several).

    First an exact match of the normalised answer with a class or one of its synonyms
    ("Happy." → happy); else the single class whose name or synonym the answer contains as
    whole words ("She looks angry." → angry); "happy or sad" and "I don't know" → None."""
    names = {c: [normalise(c), *(normalise(s) for s in (synonyms or {}).get(c, ()))] for c in classes}
    text = normalise(answer)
    exact = [c for c, forms in names.items() if text in forms]
    if len(exact) == 1:
        return exact[0]
    named = [c for c, forms in names.items() if any(form and _contains(text, form) for form in forms)]
    return named[0] if len(named) == 1 else None


def reference_class(label: Any, classes: Sequence[str]) -> str | None:
    """The class a reference label names, case and surrounding space aside ("Angry " → angry);
    None if none."""
    if label in classes:
        return label
    forms = {c.strip().casefold(): c for c in classes}
    return forms.get(label.strip().casefold()) if isinstance(label, str) else None


def unknown_label(label: Any, classes: Sequence[str]) -> str:
    """Why `label` is refused, with the nearest class when one is close."""
    near = difflib.get_close_matches(normalise(label), list(classes), n=1) if isinstance(label, str) else []
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return f"label {label!r} is not in the class list {list(classes)}{hint}"


def check_labels(labels: Sequence[str], classes: Sequence[str]) -> list[str]:
    """The classes `labels` name (reference_class); an unknown one is an error naming it."""
    named = [reference_class(label, classes) for label in labels]
    unknown = sorted({str(label) for label, c in zip(labels, named) if c is None})
    if unknown:
        raise InputError(f"references {unknown} are not in the class list: {unknown_label(unknown[0], classes)}; "
                         "set the evaluator's classes to the dataset's")
    return named


def confusion_matrix(labels: Sequence[str], predicted: Sequence[str | None], classes: Sequence[str]) -> np.ndarray:
    """[classes, classes + 1] int64 counts: row = reference, column = mapped answer (last column:
    unmapped)."""
    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes) + 1), np.int64)
    for label, guess in zip(labels, predicted):
        matrix[index[label], index.get(guess, len(classes))] += 1
    return matrix


def strict_scores(answers: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """HumanOmni's figures: exact string equality; macro recall over the union of true and
    predicted strings (scikit-learn's `recall_score`, zero for a string never true)."""
    answers = [a.strip() for a in answers]
    union = sorted(set(labels) | set(answers))
    recalls = []
    for value in union:
        true = [answer for answer, label in zip(answers, labels) if label == value]
        recalls.append(sum(a == value for a in true) / len(true) if true else 0.0)
    correct = sum(answer == label for answer, label in zip(answers, labels))
    return {"strict_war": correct / len(labels), "strict_uar": float(np.mean(recalls))}


def classification_scores(answers: Sequence[str], labels: Sequence[str], classes: Sequence[str],
                          synonyms: Mapping[str, Sequence[str]] | None = None) -> dict:
    """UAR, WAR, unmapped (a count), the strict figures, `recall` per class (None for a class
    without references) and the confusion matrix; the per-answer mapping as `predicted`."""
    if not labels:
        raise InputError("no references to score")
    named = check_labels(labels, classes)
    predicted = [map_answer(a, classes, synonyms) for a in answers]
    matrix = confusion_matrix(named, predicted, classes)
    totals = matrix.sum(axis=1)
    recall = {c: (float(matrix[i, i] / totals[i]) if totals[i] else None) for i, c in enumerate(classes)}
    present = [r for r in recall.values() if r is not None]
    return {"uar": float(np.mean(present)), "war": float(np.trace(matrix[:, :-1]) / len(labels)),
            "unmapped": int(matrix[:, -1].sum()), **strict_scores(answers, labels), "recall": recall,
            "confusion": matrix, "predicted": predicted}


# --------------------------------------------------------------------------- open vocabulary


def word_groups(groups: Mapping[str, Sequence[str]] = GROUPS) -> dict[str, str]:
    """{normalised word or phrase: group} from {group: [words]}; a word in two groups is an error."""
    table: dict[str, str] = {}
    for group, words in groups.items():
        for word in (group, *words):
            key = normalise(word)
            if table.get(key, group) != group:
                raise ValueError(f"emotion word {word!r} is in groups {table[key]!r} and {group!r}")
            table[key] = group
    return table


def emotion_words(answer: str | Sequence[str], table: Mapping[str, str]) -> list[str]:
    """The emotion words of an answer, in order, without repeats: a list's items (or a text
    split at commas, semicolons, slashes, "and", "or" and line breaks), each kept whole if it
    is a known word or phrase, else the known words it holds; an item holding none is kept as
    an unknown word (it counts in |P| and matches only itself)."""
    items = answer if not isinstance(answer, str) else re.split(r"[,;/\n]|\band\b|\bor\b", answer.lower())
    words: list[str] = []
    for item in map(normalise, items):
        if not item:
            continue
        if item in table:
            found = [item]
        else:
            found = [w for w in item.split() if w in table] + [p for p in table if " " in p and _contains(item, p)]
            found = found or ([item] if len(item.split()) <= 3 else [])
        words += [w for w in found if w not in words]
    return words


def open_vocabulary_scores(answers: Sequence[str | Sequence[str]], references: Sequence[Sequence[str]],
                           group_of: Callable[[Sequence[str], Sequence[str]], Mapping[str, str]] | None = None,
                           table: Mapping[str, str] | None = None) -> dict:
    """precision, recall, avg (means over clips) and the per-clip figures.

    group_of(true_words, predicted_words) → {word: group} decides the groups of one clip (the
    LLM grouping); by default the table's group, an unknown word its own group."""
    if not references:
        raise InputError("no references to score")
    table = word_groups() if table is None else table
    precision, recall = [], []
    for answer, reference in zip(answers, references):
        predicted, true = emotion_words(answer, table), emotion_words(list(reference), table)
        if not true:
            raise InputError(f"a reference holds no emotion word: {reference!r}")
        groups = group_of(true, predicted) if group_of else {w: table.get(w, w) for w in true + predicted}
        p, g = {groups[w] for w in predicted}, {groups[w] for w in true}
        precision.append(len(p & g) / len(p) if p else 0.0)
        recall.append(len(p & g) / len(g))
    mean_p, mean_r = float(np.mean(precision)), float(np.mean(recall))
    return {"precision": mean_p, "recall": mean_r, "avg": (mean_p + mean_r) / 2,
            "per_clip": [{"precision": p, "recall": r} for p, r in zip(precision, recall)]}
