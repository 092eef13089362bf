"""OpenAI-compatible endpoints through the official `openai` client: the evaluation's judge and
the models `omni-jax annotate` asks (a vision-language model, a transcription model, a reviewer).

`Endpoint(name, base_url, model, ...)` sends chat completions (`chat`: text, images as data
URLs, audio parts) and transcriptions (`transcribe`: `/audio/transcriptions`, verbose JSON) with
at most `concurrency` requests in flight and a timeout per request; the client retries
connection errors, timeouts, 429 and 5xx with its exponential back-off.

Every accepted reply is cached on disk under the SHA-256 of its request (model, messages or
audio, options): a rerun sends nothing it has sent before, and a killed run loses no answer it
was given. A reply `parse` rejects (`ReplyRejected`) is asked again and, after the retries,
that request's failure; so is a request that keeps timing out or failing (429, 5xx, a
truncated body): `RequestFailed`. Both are `RequestFailure`s — one item's, counted by the
caller, never the end of a run. `EndpointUnusable` (one line) only when the endpoint cannot be
used at all: nothing listens there, it refuses (a bad key, an unknown model: 4xx), or the API
key variable is not set. `figures()` counts requests and tokens.
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


class EndpointUnusable(EndpointError):
    """The endpoint cannot be used (unreachable, refused, no API key): the run stops, one line."""


class RequestFailure(Exception):
    """One request without a usable answer: that item's counted failure, the run goes on."""


class ReplyRejected(RequestFailure, ValueError):
    """A reply that does not say what was asked (asked again, then counted as a failure)."""


class RequestFailed(RequestFailure):
    """A request that kept timing out or failing (429, 5xx, a broken body) through the retries."""


def json_object(reply: str) -> dict[str, Any]:
    """The first {...} object in a reply (models wrap JSON in prose or code fences); else ReplyRejected."""
    match = re.search(r"\{.*\}", reply, re.DOTALL)
    try:
        value = json.loads(match.group(0)) if match else None
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise ReplyRejected(f"no JSON object in the reply {reply[:120]!r}")
    return value


def number_in(reply: dict[str, Any], key: str, low: float, high: float) -> float:
    """reply[key] as a float if it is a number from `low` to `high`; else ReplyRejected."""
    value = reply.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ReplyRejected(f"{key} must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def request_digest(request: dict[str, Any]) -> str:
    """The SHA-256 (hex) a request is cached under."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class Endpoint:
    """One OpenAI-compatible model: `name` says what it is for in messages and figures
    ("judge", "vision", ...). api_key_env: the variable holding the key ("" for a local server
    that needs none). cache: the replies' folder (default ~/.cache/omni_jax/NAME)."""

    def __init__(self, name: str, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 cache: str | os.PathLike = "", concurrency: int = 8, retries: int = 4, timeout: float = 60.0):
        import openai

        key = os.environ.get(api_key_env, "") if api_key_env else "none"
        if not key:
            raise EndpointUnusable(f"the {name} endpoint's API key variable {api_key_env} is not set ({base_url})")
        self.name, self.url, self.model, self.retries = name, base_url.rstrip("/"), model, retries
        self.concurrency = concurrency
        self.client = openai.OpenAI(base_url=self.url, api_key=key, timeout=timeout, max_retries=retries)
        self.cache = Path(cache or Path.home() / ".cache" / "omni_jax" / name)
        self.cache.mkdir(parents=True, exist_ok=True)
        self.usage: collections.Counter[str] = collections.Counter()  # requests, prompt and completion tokens
        self._lock, self._slots = threading.Lock(), threading.BoundedSemaphore(concurrency)

    def figures(self) -> dict[str, int]:
        """NAME_requests, NAME_prompt_tokens, NAME_completion_tokens sent so far (cached replies cost none)."""
        return {f"{self.name}_{k}": self.usage[k] for k in ("requests", "prompt_tokens", "completion_tokens")}

    def _send(self, create: Callable[[], Any]) -> Any:
        """create()'s response (the client's retries included), counted; raises EndpointUnusable or RequestFailed."""
        import openai

        try:
            with self._slots:
                response = create()
        except openai.APITimeoutError as error:  # before its base class: a slow request is one item's
            raise RequestFailed(f"{self.name}: no reply within the timeout after {self.retries + 1} attempts "
                                f"({error})") from None
        except openai.APIConnectionError as error:
            # nothing listening there (the client's HTTP library names it ConnectError): the run
            # cannot go on; a connection cut mid-reply (a truncated body) is one item's failure
            if type(error.__cause__).__name__ != "ConnectError":
                raise RequestFailed(f"{self.name}: the connection broke off ({error.__cause__ or error})") from None
            raise EndpointUnusable(f"the {self.name} endpoint {self.url} cannot be reached: "
                                   f"{error.__cause__ or error}") from None
        except (openai.RateLimitError, openai.InternalServerError) as error:
            raise RequestFailed(f"{self.name}: HTTP {error.status_code} after {self.retries + 1} attempts") from None
        except openai.APIStatusError as error:  # a refusal (bad key, unknown model): no retry helps
            raise EndpointUnusable(f"the {self.name} endpoint {self.url} refused the request: HTTP "
                                   f"{error.status_code} {error.message}") from None
        except (openai.APIError, json.JSONDecodeError, AttributeError, IndexError, TypeError, ValueError) as error:
            raise RequestFailed(f"{self.name}: an unreadable reply ({type(error).__name__}: {str(error)[:120]})"
                                ) from None
        usage = getattr(response, "usage", None)
        with self._lock:
            self.usage["requests"] += 1
            self.usage["prompt_tokens"] += getattr(usage, "prompt_tokens", 0) or 0
            self.usage["completion_tokens"] += getattr(usage, "completion_tokens", 0) or 0
        return response

    def _cached(self, request: dict[str, Any], send: Callable[[], Any], parse: Callable[[Any], T]) -> T:
        """parse(reply) of `request`, from the cache or sent (asked again while parse rejects it)."""
        digest = request_digest(request)
        path = self.cache / digest[:2] / f"{digest}.json"
        if path.exists():
            return parse(json.loads(path.read_text())["reply"])
        for attempt in range(self.retries + 1):
            reply = send()
            try:
                value = parse(reply)
            except ReplyRejected:
                if attempt == self.retries:
                    raise
                continue
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_suffix(f".tmp-{os.getpid()}-{threading.get_ident()}")
            tmp.write_text(json.dumps({"model": self.model, "reply": reply}, ensure_ascii=False))
            os.replace(tmp, path)
            return value

    def chat(self, messages: list[dict[str, Any]], parse: Callable[[str], T], **options: Any) -> T:
        """The parsed reply to `messages` (content: a string or OpenAI content parts: text,
        image_url, input_audio), temperature 0 unless `options` say otherwise; raises
        ReplyRejected, RequestFailed or EndpointUnusable (module docstring)."""
        body = {"model": self.model, "messages": messages, "temperature": 0, **options}

        def send() -> str:
            response = self._send(lambda: self.client.chat.completions.create(**body))
            reply = response.choices[0].message.content
            if not isinstance(reply, str):
                raise RequestFailed(f"{self.name}: a reply without text ({reply!r})")
            return reply
        return self._cached(body, send, parse)

    def transcribe(self, audio: bytes, parse: Callable[[dict[str, Any]], T], filename: str = "audio.wav",
                   **options: Any) -> T:
        """The parsed transcription (verbose JSON as a dict: text, language, ...) of `audio` (a
        file's bytes); options: language, prompt, temperature."""
        request = {"model": self.model, "audio_sha256": hashlib.sha256(audio).hexdigest(), **options}

        def send() -> dict[str, Any]:
            response = self._send(lambda: self.client.audio.transcriptions.create(
                model=self.model, file=(filename, audio, "audio/wav"), response_format="verbose_json", **options))
            return response.model_dump(exclude_none=True)
        return self._cached({"transcription": request}, send, parse)

    def ask_all(self, prompts: Sequence[str], parse: Callable[[str], T] | Sequence[Callable[[str], T]]
                ) -> list[T | RequestFailure]:
        """chat() for every prompt (one user message each), `concurrency` at a time, in order; a
        prompt without a usable answer gives its RequestFailure."""
        parsers = parse if isinstance(parse, Sequence) else [parse] * len(prompts)

        def one(args: tuple[str, Callable[[str], T]]) -> T | RequestFailure:
            try:
                return self.chat([{"role": "user", "content": args[0]}], args[1])
            except RequestFailure as failure:
                return failure
        with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(one, zip(prompts, parsers)))
