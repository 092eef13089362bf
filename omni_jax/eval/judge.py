"""The evaluation's judge: an OpenAI-compatible chat endpoint (`omni_jax.endpoints.Endpoint`,
named "judge": the official client, its retries, the reply cache, failures counted per clip)
for EMER's reasoning scores and MER2024's LLM grouping of open-vocabulary emotion words.

The prompts are the project's (MER/EMER publish the criteria, not a prompt we could copy):
`REASONING_PROMPT` asks for two 0–10 scores as JSON, `GROUPING_PROMPT` for a word → group map.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from omni_jax.endpoints import Endpoint, ReplyRejected, json_object, number_in

REASONING_PROMPT = """You compare a model's explanation of a person's emotional state in a video with a reference \
description written by an annotator.
Reference description:
{reference}

Model's explanation:
{answer}

Score two things from 0 to 10:
- clue_overlap: how many of the reference's emotional clues (facial expressions, voice, words, body language, \
scene) the explanation also names, and how accurately;
- label_overlap: how well the emotions the explanation concludes agree with the reference's emotional state.
Reply with only a JSON object: {{"clue_overlap": <0-10>, "label_overlap": <0-10>}}"""

GROUPING_PROMPT = """Group these emotion words so that words meaning the same emotion share a group.
Words: {words}
Reply with only a JSON object mapping every word, exactly as written, to a short group name."""


def judge_endpoint(settings: Mapping[str, Any]) -> Endpoint:
    """The endpoint an evaluator's `endpoint` config names (base_url, model, api_key_env, cache,
    concurrency, retries, timeout); a missing API key fails here, before any generation."""
    return Endpoint("judge", **settings)


def parse_reasoning(reply: str) -> dict[str, float]:
    scores = json_object(reply)
    return {key: number_in(scores, key, 0, 10) for key in ("clue_overlap", "label_overlap")}


def grouping_parser(words: Sequence[str]) -> Callable[[str], dict[str, str]]:
    def parse(reply: str) -> dict[str, str]:
        groups = {str(k).strip().lower(): str(v).strip().lower() for k, v in json_object(reply).items()}
        missing = [w for w in words if w not in groups]
        if missing:
            raise ReplyRejected(f"the grouping leaves out {missing}")
        return {w: groups[w] for w in words}
    return parse
