"""The project's words a manifest is written in: class names, their synonyms and the questions.

They come from the config's evaluators (`cfg.evals`, as `omni-jax score` takes its classes), so
a written manifest asks what `omni-jax eval` asks and names the classes it scores:

    vocabulary = Vocabulary.from_evals(load_config("configs/omni_emotion.py:7b").evals)
    vocabulary.class_name("Happiness")   # "happy": the same word in another form
    vocabulary.class_name("calm")        # "calm": a synonym of neutral, but another word
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

from omni_jax.errors import InputError

# Phase 1's questions (the config has none: the paper does not print its prompts).
TRANSCRIBE = "Transcribe what is said."
CAPTION = "Describe the sound."
# A synonym is the same word in another form when it shares this many first letters with the
# class: happiness/happy, anger/angry, sadness/sad, anxiety/anxious, but not calm/neutral or
# worried/anxious, which are other words.
SHARED_PREFIX = 3


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """classes: the project's class names in the evaluators' order; synonyms: class → words;
    classify: the classification question with an `{options}` field; open_vocabulary and
    describe: the other evaluators' questions."""

    classes: tuple[str, ...]
    synonyms: Mapping[str, tuple[str, ...]]
    classify: str
    open_vocabulary: str
    describe: str

    @classmethod
    def from_evals(cls, evals: Any) -> Vocabulary:
        """From a config's `evals` section: every emotion_classification evaluator's classes and
        synonyms, the first one's question with its option list made a field, the
        open_vocabulary and reasoning_judge evaluators' questions."""
        specs = {name: spec for name, spec in evals.items()}
        classifiers = [spec for spec in specs.values() if spec.type == "emotion_classification"]
        classes = tuple(dict.fromkeys(c for spec in classifiers for c in spec.classes))
        synonyms = {c: tuple(words) for spec in classifiers for c, words in spec.synonyms.items()}
        return cls(classes=classes, synonyms=synonyms, classify=_options_field(specs, classifiers),
                   open_vocabulary=_question(specs, "open_vocabulary"), describe=_question(specs, "reasoning_judge"))

    def class_name(self, word: str) -> str:
        """`word` (a dataset's class word) in the project's name: lower case; a class, or a
        synonym of one in another form of the same word, becomes that class; any other word
        stays as it is."""
        word = word.strip().lower()
        same = [c for c in self.classes if word == c or (
            word in self.synonyms.get(c, ()) and word[:SHARED_PREFIX] == c[:SHARED_PREFIX])]
        return same[0] if same else word

    def options(self, names: Iterable[str]) -> str:
        """The classification question over `names` (project names): the project's classes
        among them in the project's order, then the others in their order."""
        names = list(dict.fromkeys(names))
        ordered = [c for c in self.classes if c in names] + [n for n in names if n not in self.classes]
        return self.classify.format(options=", ".join(ordered))


def _question(specs: Mapping[str, Any], kind: str) -> str:
    for spec in specs.values():
        if spec.type == kind:
            return spec.question
    raise InputError(f"the config's evals have no {kind} evaluator (they are {sorted(specs)}): its question is "
                     "the manifest's")


def _options_field(specs: Mapping[str, Any], classifiers: list[Any]) -> str:
    """The first classification question with the option list it names replaced by `{options}`."""
    if not classifiers:
        _question(specs, "emotion_classification")
    spec = classifiers[0]
    listed = ", ".join(spec.classes)
    if listed not in spec.question:
        raise InputError(f"the classification question {spec.question!r} does not list its classes ({listed!r}): "
                         "a manifest's question lists the dataset's own classes in their place")
    return spec.question.replace("{", "{{").replace("}", "}}").replace(listed, "{options}")
