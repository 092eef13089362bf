"""An OpenAI-compatible chat endpoint as a judge: EMER's reasoning scores and MER2024's
LLM grouping of open-vocabulary emotion words.

`JudgeClient.ask(messages, parse)` posts `{model, messages, temperature: 0}` to
`BASE_URL/chat/completions` (the API key from the environment variable the config names),
with a bounded number of requests in flight, a timeout per request and retries with
exponential back-off on connection errors, timeouts, 429 and 5xx. Every reply is cached on
disk under the SHA-256 of its request (model, messages, temperature): a rerun sends nothing
it has sent before. A reply `parse` rejects is asked again (the cache keeps only accepted
replies) and, after the retries, recorded as a failure — never as a score.

The prompts are the project's (MER/EMER publish the criteria, not a prompt we could copy):
`REASONING_PROMPT` asks for two 0–10 scores as JSON, `GROUPING_PROMPT` for a word → group map.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from omni_jax.errors import EndpointError

T = TypeVar("T")

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


class JudgeError(EndpointError):
    """The endpoint cannot be used (unreachable, refused, no API key)."""


class ReplyRejected(ValueError):
    """A reply that does not say what was asked (it is asked again, then counted as a failure)."""


def json_object(reply: str) -> dict[str, Any]:
    """The first {...} object in a reply (models wrap JSON in prose or code fences)."""
    match = re.search(r"\{.*\}", reply, re.DOTALL)
    try:
        value = json.loads(match.group(0)) if match else None
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise ReplyRejected(f"no JSON object in the reply {reply[:120]!r}")
    return value


def parse_reasoning(reply: str) -> dict[str, float]:
    scores = json_object(reply)
    out = {}
    for key in ("clue_overlap", "label_overlap"):
        value = scores.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 10:
            raise ReplyRejected(f"{key} must be a number from 0 to 10, got {value!r}")
        out[key] = float(value)
    return out


def grouping_parser(words: Sequence[str]) -> Callable[[str], dict[str, str]]:
    def parse(reply: str) -> dict[str, str]:
        groups = {str(k).strip().lower(): str(v).strip().lower() for k, v in json_object(reply).items()}
        missing = [w for w in words if w not in groups]
        if missing:
            raise ReplyRejected(f"the grouping leaves out {missing}")
        return {w: groups[w] for w in words}
    return parse


class JudgeClient:
    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", cache: str | os.PathLike = "",
                 concurrency: int = 8, retries: int = 4, timeout: float = 60.0, backoff: float = 1.0):
        key = os.environ.get(api_key_env, "") if api_key_env else "none"
        if not key:
            raise JudgeError(f"the judge's API key variable {api_key_env} is not set (endpoint {base_url})")
        self.url, self.model, self.key = base_url.rstrip("/") + "/chat/completions", model, key
        self.cache = Path(cache or Path.home() / ".cache" / "omni_jax" / "judge")
        self.cache.mkdir(parents=True, exist_ok=True)
        self.concurrency, self.retries, self.timeout, self.backoff = concurrency, retries, timeout, backoff

    def _post(self, body: dict[str, Any]) -> str:
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self.key}"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read())["choices"][0]["message"]["content"]

    def ask(self, messages: list[dict[str, str]], parse: Callable[[str], T]) -> T:
        """The parsed reply to `messages` (cached); raises ReplyRejected after the retries if
        every reply was rejected, JudgeError if the endpoint could not be reached or refused."""
        body = {"model": self.model, "messages": messages, "temperature": 0}
        path = self.cache / (hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest() + ".json")
        if path.exists():
            return parse(json.loads(path.read_text())["reply"])
        problem: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                reply = self._post(body)
                value = parse(reply)
            except urllib.error.HTTPError as error:
                if error.code != 429 and error.code < 500:  # a refusal (bad key, bad model): no retry helps
                    raise JudgeError(f"{self.url} refused the request: HTTP {error.code} {error.reason}") from None
                problem = error
            except (urllib.error.URLError, TimeoutError, ConnectionError, KeyError, IndexError,
                    json.JSONDecodeError, ReplyRejected) as error:
                problem = error
            else:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps({"request": body, "reply": reply}))
                os.replace(tmp, path)
                return value
        if isinstance(problem, ReplyRejected):
            raise problem
        raise JudgeError(f"{self.url} did not answer after {self.retries + 1} attempts ({problem})")

    def ask_all(self, prompts: Sequence[str], parse: Callable[[str], T] | Sequence[Callable[[str], T]]
                ) -> list[T | ReplyRejected]:
        """ask() for every prompt (one user message each), `concurrency` at a time, in order;
        a prompt whose replies were all rejected gives its ReplyRejected."""
        parsers = parse if isinstance(parse, Sequence) else [parse] * len(prompts)

        def one(args: tuple[str, Callable[[str], T]]) -> T | ReplyRejected:
            try:
                return self.ask([{"role": "user", "content": args[0]}], args[1])
            except ReplyRejected as rejected:
                return rejected
        with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(one, zip(prompts, parsers)))
