"""What a connection of the front or an endpoint server hands over and gets back: the
limits it obeys, a parsed request, an answer (whole, or streamed as it is made), and the
WSGI bridge (:func:`call_wsgi`).

The connection itself is :mod:`.connection`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import random
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from .. import protocol
from ..errors import NotFound, ServingError

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}


def status_line(status: int) -> bytes:
    """The HTTP/1.1 status line of ``status``."""
    return _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n".encode()


def new_request_id() -> str:
    """The id of a request that brings none: 16 hex digits.

    From :mod:`random` (whose generator every forked process reseeds), not ``os.urandom``:
    an id is a label, not a secret, and a system call per request shows in the front's
    profile.
    """
    return f"{random.getrandbits(64):016x}"


@dataclass
class Limits:
    """Deadlines and sizes every connection of the front obeys."""

    header_timeout: float = 60.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 30.0
    max_body: int = 64 * 1024 * 1024
    # Body limit of every route but the data path (management calls are small).
    max_other_body: int = 1024 * 1024
    # The data path: the paths whose bodies may reach max_body.
    data_paths: frozenset[bytes] = frozenset((b"/run", b"/jobs"))
    # Bytes of bodies being received that one process holds (past each body's first
    # SMALL_BODY); 0: room for four bodies of max_body, at least 256 MiB.
    body_budget: int = 0
    # How long the answers may stay unread past HIGH_WATER before the connection is
    # dropped (nginx's send_timeout); 0: body_timeout.
    send_timeout: float = 0.0

    def __post_init__(self) -> None:
        self.body_budget = self.body_budget or max(4 * self.max_body, 256 * 1024 * 1024)
        self.send_timeout = self.send_timeout or self.body_timeout

    def body_limit(self, path: bytes) -> int:
        """The most bytes a body sent to ``path`` may have."""
        return self.max_body if path in self.data_paths else self.max_other_body


class BodyBudget:
    """Bytes of request bodies being received in one process, past each one's first
    :data:`.connection.SMALL_BODY`: the most that clients sending bodies at once can
    make it hold."""

    __slots__ = ("limit", "held")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes; False (nothing reserved) when that would pass the limit."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        """Return bytes reserved by :meth:`take`."""
        self.held -= size


@dataclass
class Request:
    """One parsed request; ``head`` keeps the header lines worth passing upstream."""

    method: str
    path: str
    query: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    request_id: str
    keep_alive: bool
    peer: tuple[str, int]
    tls: bool = False
    # An HTTP/1.0 client reads no chunked transfer encoding: a stream is sent raw and
    # ended by closing the connection.
    http10: bool = False
    key: Any = None  # tenants.keys.ApiKey, with API_KEYS on
    limits: Any = None  # tenants.limits.Decision: RateLimit-* headers of the answer
    # tenants.token_budget.TokenHold: the tokens reserved for it (the OpenAI routes).
    budget: Any = None
    received: float = 0.0  # time.perf_counter() at its last byte (SERVER_TIMING's start)
    # X-Request-Deadline at the gateway: when it passes (time.perf_counter()); None
    # without one.
    deadline: float | None = None
    # SERVER_TIMING, at the gateway: when the upstream call began and ended.
    upstream_span: tuple[float, float] | None = None
    trace: Any = None  # tracing.Trace: its spans, when TRACING sampled it


@dataclass
class Answer:
    """An answer: ``body`` whole, or ``stream``, whose chunks the connection writes as
    they come (chunked transfer encoding), waiting while the client's reads lag, and
    closes (``aclose``) when the client goes away or the answer ends."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stream: AsyncGenerator[bytes, None] | None = None
    # Header lines passed on as they came (each ending in CRLF), written before
    # ``headers``: the front relays an endpoint server's without decoding and encoding
    # them again on every request. Never a framing header (Content-Length ...).
    raw_headers: bytes = b""


class Streamed:
    """A WSGI result to send as it is made: an iterator of byte chunks that blocks
    (endpoint code producing them), so each one is taken off the loop
    (:func:`threaded_chunks`).

    ``cancel`` is called on the loop as soon as the client goes away, while a chunk may
    still be in the making (it tells the producer to stop: ``FlaskWorker.cancelled``);
    ``close`` ends the iterator in a thread, once no chunk is in the making (a generator
    cannot be closed while it runs), which raises ``GeneratorExit`` at its ``yield``.
    """

    def __init__(self, chunks: Iterator[bytes], cancel: Callable[[], None] = lambda: None,
                 close: Callable[[], None] | None = None) -> None:
        self.chunks = chunks
        self.cancel = cancel
        self.close = close if close is not None else getattr(chunks, "close", lambda: None)

    def __iter__(self) -> Iterator[bytes]:
        return self.chunks


_END = object()


def _close_after(pending: concurrent.futures.Future[Any] | None, streamed: Streamed) -> None:
    if pending is not None:
        concurrent.futures.wait([pending])
    streamed.close()


async def threaded_chunks(streamed: Streamed, executor: Executor) -> AsyncGenerator[bytes, None]:
    """The chunks of ``streamed``, each made in ``executor``: the next one is asked for
    only once the connection took the last (a slow reader pauses the producer)."""
    pending: concurrent.futures.Future[Any] | None = None
    finished = False
    try:
        while True:
            pending = executor.submit(next, streamed.chunks, _END)
            chunk = await asyncio.wrap_future(pending)
            if chunk is _END:
                finished = True
                return
            pending = None
            yield chunk
    finally:
        if not finished:
            streamed.cancel()
        executor.submit(_close_after, pending, streamed)


Handler = Callable[[Request], Awaitable[Answer]]


def error_answer(err: ServingError, meta: dict[str, Any]) -> Answer:
    """The JSON error answer of ``err``, with the server's metadata."""
    return Answer(err.status, [("Content-Type", protocol.JSON), *err.headers()],
                  protocol.error_body(err, meta))


def canonical(path: str) -> bool:
    """Whether a path is taken as sent: no ``%`` escape, no empty, ``.`` or ``..`` segment."""
    if "%" in path or "//" in path:
        return False
    return "/." not in path or not any(part in (".", "..") for part in path.split("/"))


def not_canonical(path: str, meta: dict[str, Any]) -> Answer:
    """The 404 of a path that :func:`canonical` refuses."""
    return error_answer(NotFound(
        f"no route {path[:200]}: paths are taken as sent, without %-escapes and without "
        "empty, '.' or '..' segments; see /get_paths"), meta)


def wsgi_environ(req: Request) -> dict[str, Any]:
    """The WSGI environ of one complete request."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": req.method,
        "SCRIPT_NAME": "",
        # As sent: a path with an escape never gets here (see canonical).
        "PATH_INFO": req.path,
        "QUERY_STRING": req.query,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "0",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": req.peer[0],
        "REMOTE_PORT": str(req.peer[1]),
        "CONTENT_LENGTH": str(len(req.body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https" if req.tls else "http",
        "wsgi.input": io.BytesIO(req.body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "bis.request_id": req.request_id,
        "bis.api_key": req.key,
    }
    for name, value in req.headers:
        key = name.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        if key == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = text
        elif key == "CONTENT_LENGTH":
            continue
        elif key == "HOST":
            environ["HTTP_HOST"] = text
            environ["SERVER_NAME"] = text.rsplit(":", 1)[0]
        else:
            http_key = "HTTP_" + key
            environ[http_key] = f"{environ[http_key]},{text}" if http_key in environ else text
    return environ


def call_wsgi(app: Callable[..., Any], req: Request, executor: Executor | None = None,
              cancel: Any = None) -> Answer:
    """Run a WSGI app on one complete request (blocking: call it off the loop).

    A :class:`Streamed` result becomes the answer's ``stream``, its chunks made in
    ``executor``; any other result is read whole. ``cancel`` (environ ``bis.cancel``): the
    request's flag, set by the caller when the client goes away while the app runs."""
    environ = wsgi_environ(req)
    environ["bis.cancel"] = cancel
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [status, headers]
        return lambda _data: None

    result = app(environ, start_response)
    stream = None
    if isinstance(result, Streamed) and executor is not None:
        body, stream = b"", threaded_chunks(result, executor)
    else:
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    status = int(started[0].split(" ", 1)[0])
    # HEAD: the app's Content-Length is the one of the body a GET would get.
    skip = ("connection", "x-request-id") if req.method == "HEAD" else \
        ("content-length", "connection", "x-request-id", "transfer-encoding")
    return Answer(status, [(k, v) for k, v in started[1] if k.lower() not in skip], body,
                  stream)


