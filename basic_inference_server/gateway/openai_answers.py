"""``/run`` answers made into OpenAI's objects: completions, their stream's chunks,
embeddings, the model list and errors.

A stream is read from the run flow in NDJSON (one event a line, :mod:`..streams`) and
written as OpenAI writes it: ``data: <chunk>`` events, then ``data: [DONE]``. A failure
inside a stream is a ``data: {"error": ...}`` event, its last, as OpenAI's own.
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .. import streams
from ..errors import ServingError
from ..wire.message import Answer

SSE_HEADERS = [("Content-Type", "text/event-stream; charset=utf-8"), *streams.STREAM_HEADERS]
JSON_HEADERS = [("Content-Type", "application/json")]
DONE_EVENT = b"data: [DONE]\n\n"
# OpenAI's error type by status (its SDKs pick their exception by status, the type is
# what a caller reads); ``code`` carries this gateway's ERROR_TYPE.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
               409: "conflict_error", 413: "invalid_request_error",
               415: "invalid_request_error", 429: "rate_limit_error"}
# The headers of an error answer a caller still needs.
KEPT_HEADERS = frozenset(("retry-after", "www-authenticate", "allow", "x-endpoint-version"))


def error_object(status: int, message: str, code: str | None,
                 param: str | None = None) -> dict[str, Any]:
    """OpenAI's error body."""
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_of(err: ServingError) -> Answer:
    """The OpenAI answer of an error raised in the OpenAI routes."""
    param = err.details.get("PARAM")
    code = "model_not_found" if err.kind == "not_found" and param == "model" else err.kind
    return Answer(err.status, [*JSON_HEADERS, *err.headers()],
                  orjson.dumps(error_object(err.status, err.message, code, param)))


def reshaped_error(answer: Answer) -> Answer:
    """A ``/run`` error answer (``ERROR``, ``ERROR_TYPE``) in OpenAI's shape, its
    caller-facing headers kept (``Retry-After``, ``WWW-Authenticate``, rate limits)."""
    try:
        body = orjson.loads(answer.body)
        message, code = str(body["ERROR"]), str(body.get("ERROR_TYPE") or "")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message, code = answer.body[:500].decode("utf-8", "replace"), ""
    if code == "not_found" and answer.status == 404:
        code = "model_not_found"
    return Answer(answer.status, [*JSON_HEADERS, *kept_headers(answer)],
                  orjson.dumps(error_object(answer.status, message, code or None)))


def kept_headers(answer: Answer) -> list[tuple[str, str]]:
    """The headers of ``answer`` worth passing on (rate limits, Retry-After ...)."""
    kept = [(k, v) for k, v in answer.headers
            if k.lower() in KEPT_HEADERS or k.lower().startswith("ratelimit")]
    for line in answer.raw_headers.split(b"\r\n"):
        name, _, value = line.partition(b": ")
        if name.lower().decode("latin-1") in KEPT_HEADERS:
            kept.append((name.decode("latin-1"), value.decode("latin-1")))
    return kept


@dataclass
class Generated:
    """What a generation made, gathered from its chunks."""

    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, chunk: dict[str, Any]) -> str:
        """Take one chunk's text and counts; its text."""
        text = chunk.get("text")
        text = text if isinstance(text, str) else ""
        if text:
            self.text.append(text)
        reason = chunk.get("finish_reason")
        if reason is not None:
            self.finish_reason = str(reason)
        for name in ("prompt_tokens", "completion_tokens"):
            value = chunk.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(self, name, value)
        return text

    def usage(self) -> dict[str, int]:
        """OpenAI's ``usage``."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


@dataclass(frozen=True)
class Completion:
    """How one answer is written: chat or text completion, its id, model and time."""

    chat: bool
    id: str
    model: str
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def of(cls, chat: bool, request_id: str, model: str, include_usage: bool) -> Completion:
        """The completion of a request."""
        return cls(chat, f"{'chatcmpl' if chat else 'cmpl'}-{request_id}", model, include_usage)

    def _head(self, chunk: bool) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        return {"id": self.id, "object": kind + (".chunk" if chunk and self.chat else ""),
                "created": self.created, "model": self.model}

    def whole(self, made: Generated) -> dict[str, Any]:
        """The answer of a request that did not stream."""
        text = "".join(made.text)
        choice: dict[str, Any] = {"index": 0, "finish_reason": made.finish_reason or "stop",
                                  "logprobs": None}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text, "refusal": None}
        else:
            choice["text"] = text
        return {**self._head(False), "choices": [choice], "usage": made.usage()}

    def chunk(self, text: str | None, finish_reason: str | None = None,
              first: bool = False) -> bytes:
        """One event of a stream."""
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["text"] = text or ""
        obj = {**self._head(True), "choices": [choice]}
        if self.include_usage:
            obj["usage"] = None
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def usage_chunk(self, made: Generated) -> bytes:
        """The stream's usage chunk (``include_usage``): no choices."""
        obj = {**self._head(True), "choices": [], "usage": made.usage()}
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    async def events(self, relay: AsyncGenerator[bytes, None],
                     ended: Callable[[Generated | None], Awaitable[None]]
                     ) -> AsyncGenerator[bytes, None]:
        """The OpenAI stream of an NDJSON stream of events; closing it closes ``relay``
        (which stops the endpoint's work). ``ended`` gets what was generated once the
        stream is over (None: it did not end with its done event)."""
        made = Generated()
        first = True
        done = False
        try:
            async for block in relay:
                out = []
                for line in block.splitlines():
                    event = orjson.loads(line)
                    name, data = event["event"], event["data"]
                    if name == streams.CHUNK:
                        text = made.add(data)
                        if text or first:
                            out.append(self.chunk(text, first=first))
                            first = False
                    elif name == streams.DONE:
                        done = True
                        out.append(self._ending(made))
                    else:
                        out.append(b"data: " + orjson.dumps(error_object(
                            500, str(data.get("ERROR", "the stream failed")),
                            str(data.get("ERROR_TYPE") or "stream_error"))) + b"\n\n")
                if out:
                    yield b"".join(out)
        finally:
            await relay.aclose()
            await ended(made if done else None)

    async def replayed(self, made: Generated) -> AsyncGenerator[bytes, None]:
        """The OpenAI stream of a whole answer (an endpoint that does not stream)."""
        yield self.chunk("".join(made.text), first=True) + self._ending(made)

    def _ending(self, made: Generated) -> bytes:
        end = self.chunk(None if self.chat else "", made.finish_reason or "stop")
        if self.include_usage:
            end += self.usage_chunk(made)
        return end + DONE_EVENT


def embeddings_answer(body: dict[str, Any], model: str, base64_floats: bool) -> dict[str, Any]:
    """OpenAI's embeddings list of an endpoint's ``{"embeddings": [...], "prompt_tokens"}``."""
    vectors = body.get("embeddings")
    if not isinstance(vectors, list):
        raise ValueError("the endpoint's answer has no embeddings list")
    data = []
    for i, vector in enumerate(vectors):
        value: Any = vector
        if base64_floats:  # little-endian float32, as OpenAI sends them
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = body.get("prompt_tokens")
    tokens = tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else 0
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def model_list(names: list[str]) -> dict[str, Any]:
    """``GET /v1/models``."""
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "basic_inference_server"}
        for name in names]}
