"""The prompts `omni-jax annotate` sends and the parsers its replies must pass.

The paper (§3) describes the steps, not its prompts: these are the project's, versioned as a
whole (`VERSION`, written into every record; change it with any prompt or parser, so that a
record always says what made it). Each prompt asks for one JSON object; a reply is used only
if its parser accepts it (`ReplyRejected` otherwise: asked again, then the clip's failure),
so nothing is recorded from a reply that did not parse.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omni_jax.endpoints import ReplyRejected, json_object, number_in

VERSION = "annotate-1"

SCENE = """These are {frames} frames of a video clip, {rate:g} per second, in order.
Describe what they show: the setting, the people (the one in the foreground first) and what they do, \
their posture and gestures, and anything in the scene that bears on how they feel. Do not guess the emotion.
Reply with only a JSON object: {{"scene": "<the setting>", "people": "<the people and what they do>"}}"""

FACE = """These are {crops} crops of one person's face from a video clip, {rate:g} per second, in order.
Describe the facial movements and expressions over time: brows, eyes, gaze, mouth, head movements, and how \
they change.{age_gender}
Reply with only a JSON object: {{"expressions": "<what the face does>"{age_gender_keys}}}"""

AGE_GENDER = "\nAlso estimate the person's apparent age in years and gender (female or male)."
AGE_GENDER_KEYS = ', "age": <years>, "gender": "<female or male>"'

ESTIMATE_AGE_GENDER = """This is a person's face. Estimate the apparent age in years and the gender (female or male).
Reply with only a JSON object: {"age": <years>, "gender": "<female or male>"}"""

TONE = """This is the sound of a video clip. Describe the speaker's tone of voice: pitch, loudness, pace, \
tremor, laughter or crying, and the vocal emotion they convey.
Reply with only a JSON object: {"tone": "<the voice>"}"""

REVIEW = """You are given cues about a person in a video clip, each from a different model.
Scene: {scene}
Face: {face}
Speech ({language}): "{speech}"
Voice: {tone}

From these cues, explain the person's emotional state. Cite the cues you rely on (facial movements, voice, \
words, scene); where cues disagree, say which you trust and why. Then name the emotions in open-vocabulary \
words, and their intensity from 1 (faint) to 5 (overwhelming). If the cues are too few or contradict each \
other so that no emotion can be stated with confidence, set "uncertain" to true.
Reply with only a JSON object: {{"reason": "<the explanation>", "emotions": ["<word>", ...], \
"intensity": <1-5>, "uncertain": <true or false>}}"""

SCORE = """A video clip's ground-truth emotion label is "{label}".
An annotator explained the person's emotional state as follows.
Explanation: {reason}
Emotions named: {emotions}

Score from 0 to 10 how well the explanation agrees with the ground-truth label: 10 when its conclusion and \
its cues clearly support the label, 0 when they contradict it.
Reply with only a JSON object: {{"score": <0-10>}}"""

GENDERS = ("female", "male")
MAX_EMOTIONS = 8


def text_field(reply: dict[str, Any], key: str) -> str:
    value = reply.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ReplyRejected(f"{key} must be a non-empty string, got {value!r}")
    return value.strip()


def parse_scene(reply: str) -> dict[str, str]:
    obj = json_object(reply)
    return {"scene": text_field(obj, "scene"), "people": text_field(obj, "people")}


def parse_age_gender(obj: dict[str, Any]) -> dict[str, Any]:
    gender = obj.get("gender")
    if not isinstance(gender, str) or gender.strip().lower() not in GENDERS:
        raise ReplyRejected(f"gender must be one of {GENDERS}, got {gender!r}")
    return {"age": number_in(obj, "age", 0, 110), "gender": gender.strip().lower()}


def face_parser(with_age_gender: bool) -> Callable[[str], dict[str, Any]]:
    """The FACE reply's parser: expressions, and age and gender when the prompt asked for them."""
    def parse(reply: str) -> dict[str, Any]:
        obj = json_object(reply)
        return {"expressions": text_field(obj, "expressions"), **(parse_age_gender(obj) if with_age_gender else {})}
    return parse


def parse_estimate(reply: str) -> dict[str, Any]:
    return parse_age_gender(json_object(reply))


def parse_tone(reply: str) -> dict[str, str]:
    return {"tone": text_field(json_object(reply), "tone")}


def parse_transcription(reply: dict[str, Any]) -> dict[str, Any]:
    """A verbose transcription → {"text" (may be empty: no speech), "language" (or "unknown")}."""
    text, language = reply.get("text"), reply.get("language") or "unknown"
    if not isinstance(text, str) or not isinstance(language, str):
        raise ReplyRejected(f"a transcription has a text and a language, got {str(reply)[:120]!r}")
    return {"text": text.strip(), "language": language}


def parse_review(reply: str) -> dict[str, Any]:
    obj = json_object(reply)
    emotions = obj.get("emotions")
    if (not isinstance(emotions, list) or not 1 <= len(emotions) <= MAX_EMOTIONS
            or not all(isinstance(w, str) and w.strip() for w in emotions)):
        raise ReplyRejected(f"emotions must be 1 to {MAX_EMOTIONS} words, got {emotions!r}")
    intensity = number_in(obj, "intensity", 1, 5)
    if intensity != int(intensity):
        raise ReplyRejected(f"intensity must be a whole number from 1 to 5, got {intensity!r}")
    uncertain = obj.get("uncertain", False)
    if not isinstance(uncertain, bool):
        raise ReplyRejected(f"uncertain must be true or false, got {uncertain!r}")
    words = list(dict.fromkeys(w.strip().lower() for w in emotions))
    return {"reason": text_field(obj, "reason"), "emotions": words, "intensity": int(intensity),
            "uncertain": uncertain}


def parse_score(reply: str) -> float:
    return number_in(json_object(reply), "score", 0, 10)
