"""An OpenAI-compatible server on localhost whose replies a function writes: what the tests and
`experiments/bench_annotate.py` run the endpoint clients (`omni_jax.endpoints`, the official
`openai` client) against.

    with StubServer(lambda request: Reply("Hello."), latency=0.25) as server:
        client = openai.OpenAI(base_url=server.url, api_key="secret")

It serves `POST /v1/chat/completions` (JSON) and `POST /v1/audio/transcriptions` (multipart:
the file and the form fields), each answered by `reply(request)`: a text (chat) or a dict
(transcription), an HTTP error status, a delay, or a body cut short. Every request is kept in
`server.requests`. A server started with `api_key` answers 401 to any other key.
"""
from __future__ import annotations

import base64
import dataclasses
import email.parser
import email.policy
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import cv2
import numpy as np


@dataclasses.dataclass
class Request:
    kind: str  # "chat" or "transcription"
    body: dict[str, Any]  # chat: the JSON body; transcription: the form's fields
    audio: bytes | None = None  # transcription: the file's bytes

    @property
    def text(self) -> str:
        """The chat request's text: every text part of every message, in order."""
        parts = []
        for message in self.body.get("messages", []):
            content = message["content"]
            parts += [content] if isinstance(content, str) else [p["text"] for p in content if p["type"] == "text"]
        return "\n".join(parts)

    def images(self) -> list[np.ndarray]:
        """The chat request's images (data URLs), decoded: [H, W, 3] uint8 RGB each."""
        images = []
        for message in self.body.get("messages", []):
            for part in message["content"] if isinstance(message["content"], list) else []:
                if part["type"] == "image_url":
                    data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                    images.append(cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                                               cv2.COLOR_BGR2RGB))
        return images

    def audio_parts(self) -> list[bytes]:
        """The chat request's audio parts (input_audio), decoded."""
        return [base64.b64decode(part["input_audio"]["data"]) for message in self.body.get("messages", [])
                for part in (message["content"] if isinstance(message["content"], list) else [])
                if part["type"] == "input_audio"]


@dataclasses.dataclass
class Reply:
    content: str | dict[str, Any] = ""  # chat: the assistant's text; transcription: the verbose JSON
    status: int = 200  # anything else: an error body with that status
    delay: float = 0.0  # seconds before answering (besides the server's latency)
    truncated: bool = False  # send half the body, then close the connection


class StubServer:
    def __init__(self, reply: Callable[[Request], Reply], api_key: str | None = None, latency: float = 0.0):
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path.endswith("/chat/completions"):
                    request = Request("chat", json.loads(data))
                elif self.path.endswith("/audio/transcriptions"):
                    request = _transcription(self.headers["Content-Type"], data)
                else:
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                with stub.lock:
                    stub.requests.append(request)
                if api_key is not None and self.headers["Authorization"] != f"Bearer {api_key}":
                    return self._send(401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
                answer = reply(request)
                time.sleep(latency + answer.delay)
                if answer.status != 200:
                    return self._send(answer.status, {"error": {"message": f"HTTP {answer.status}"}})
                if request.kind == "transcription":
                    return self._send(200, answer.content, answer.truncated)
                self._send(200, {"id": "stub", "object": "chat.completion", "created": 0,
                                 "model": request.body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": answer.content}}],
                                 "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}},
                           answer.truncated)

            def _send(self, code: int, payload: Any, truncated: bool = False) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[:len(data) // 2] if truncated else data)
                if truncated:
                    self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server(("localhost", 0), Handler)
        self.url = f"http://localhost:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stops serving and closes the socket: a new connection is then refused."""
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> StubServer:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a burst of new connections at concurrency 128 (the default is 5)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):  # a client that gave up
            super().handle_error(request, client_address)


def _transcription(content_type: str, data: bytes) -> Request:
    """A multipart/form-data transcription request: its fields and its file."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + data)
    fields, audio = {}, None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None:
            audio = part.get_payload(decode=True)
        else:
            fields[name] = part.get_content()
    return Request("transcription", fields, audio)
