"""An OpenAI-compatible chat endpoint as a judge: EMER's reasoning scores and MER2024's
LLM grouping of open-vocabulary emotion words.

`JudgeClient.ask(messages, parse)` sends `{model, messages, temperature: 0}` through the
official `openai` client (`BASE_URL/chat/completions`, the API key from the environment
variable the config names), with a bounded number of requests in flight and a timeout per
request; the client retries connection errors, timeouts, 429 and 5xx with its exponential
back-off. Every reply is cached on disk under the SHA-256 of its request (model, messages,
temperature): a rerun sends nothing it has sent before. A reply `parse` rejects is asked again
(the cache keeps only accepted replies) and, after the retries, recorded as that prompt's
failure — never as a score; so is a request that keeps timing out or failing (429, 5xx, a
truncated body): one prompt, not the run. The run stops with one line (`JudgeError`) only when
the endpoint cannot be used: nothing listens there, or it refuses (a bad key, an unknown model).
`usage` counts requests and tokens.

The prompts are the project's (MER/EMER publish the criteria, not a prompt we could copy):
`REASONING_PROMPT` asks for two 0–10 scores as JSON, `GROUPING_PROMPT` for a word → group map.
"""
from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import os
import re
import threading
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


class JudgeFailure(Exception):
    """One prompt the judge gave no usable answer to: counted, the evaluation goes on."""


class ReplyRejected(JudgeFailure, ValueError):
    """A reply that does not say what was asked (it is asked again, then counted as a failure)."""


class RequestFailed(JudgeFailure):
    """A request that kept timing out or failing (429, 5xx, a broken body) through the retries."""


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
                 concurrency: int = 8, retries: int = 4, timeout: float = 60.0):
        import openai

        key = os.environ.get(api_key_env, "") if api_key_env else "none"
        if not key:
            raise JudgeError(f"the judge's API key variable {api_key_env} is not set (endpoint {base_url})")
        self.url, self.model, self.retries, self.concurrency = base_url.rstrip("/"), model, retries, concurrency
        self.client = openai.OpenAI(base_url=self.url, api_key=key, timeout=timeout, max_retries=retries)
        self.cache = Path(cache or Path.home() / ".cache" / "omni_jax" / "judge")
        self.cache.mkdir(parents=True, exist_ok=True)
        self.usage: collections.Counter[str] = collections.Counter()  # requests, prompt and completion tokens
        self._lock = threading.Lock()

    def figures(self) -> dict[str, int]:
        """judge_requests, judge_prompt_tokens, judge_completion_tokens sent so far (cached replies cost none)."""
        return {f"judge_{k}": self.usage[k] for k in ("requests", "prompt_tokens", "completion_tokens")}

    def _reply(self, body: dict[str, Any]) -> str:
        """One reply (the client's retries included); raises JudgeError or RequestFailed."""
        import openai

        try:
            response = self.client.chat.completions.create(**body)
            reply = response.choices[0].message.content
        except openai.APITimeoutError as error:  # before its base class: a slow request is one prompt's
            raise RequestFailed(f"no reply within the timeout after {self.retries + 1} attempts ({error})") from None
        except openai.APIConnectionError as error:
            # nothing listening there (the client's HTTP library names it ConnectError): the run
            # cannot go on; a connection cut mid-reply (a truncated body) is one prompt's failure
            if type(error.__cause__).__name__ != "ConnectError":
                raise RequestFailed(f"the connection broke off ({error.__cause__ or error})") from None
            raise JudgeError(f"{self.url} cannot be reached: {error.__cause__ or error}") from None
        except (openai.RateLimitError, openai.InternalServerError) as error:
            raise RequestFailed(f"HTTP {error.status_code} after {self.retries + 1} attempts") from None
        except openai.APIStatusError as error:  # a refusal (bad key, unknown model): no retry helps
            raise JudgeError(f"{self.url} refused the request: HTTP {error.status_code} {error.message}") from None
        except (openai.APIError, json.JSONDecodeError, AttributeError, IndexError, TypeError) as error:
            raise RequestFailed(f"an unreadable reply ({type(error).__name__}: {str(error)[:120]})") from None
        with self._lock:
            self.usage["requests"] += 1
            if response.usage is not None:
                self.usage["prompt_tokens"] += response.usage.prompt_tokens or 0
                self.usage["completion_tokens"] += response.usage.completion_tokens or 0
        if not isinstance(reply, str):
            raise RequestFailed(f"a reply without text ({reply!r})")
        return reply

    def ask(self, messages: list[dict[str, str]], parse: Callable[[str], T]) -> T:
        """The parsed reply to `messages` (cached); raises ReplyRejected after the retries if
        every reply was rejected, RequestFailed if the requests kept failing, JudgeError if the
        endpoint could not be reached or refused."""
        body = {"model": self.model, "messages": messages, "temperature": 0}
        path = self.cache / (hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest() + ".json")
        if path.exists():
            return parse(json.loads(path.read_text())["reply"])
        for attempt in range(self.retries + 1):
            reply = self._reply(body)
            try:
                value = parse(reply)
            except ReplyRejected:
                if attempt == self.retries:
                    raise
                continue
            tmp = path.with_suffix(f".tmp-{threading.get_ident()}")
            tmp.write_text(json.dumps({"request": body, "reply": reply}))
            os.replace(tmp, path)
            return value

    def ask_all(self, prompts: Sequence[str], parse: Callable[[str], T] | Sequence[Callable[[str], T]]
                ) -> list[T | JudgeFailure]:
        """ask() for every prompt (one user message each), `concurrency` at a time, in order;
        a prompt without a usable answer gives its JudgeFailure."""
        parsers = parse if isinstance(parse, Sequence) else [parse] * len(prompts)

        def one(args: tuple[str, Callable[[str], T]]) -> T | JudgeFailure:
            try:
                return self.ask([{"role": "user", "content": args[0]}], args[1])
            except JudgeFailure as failure:
                return failure
        with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(one, zip(prompts, parsers)))
