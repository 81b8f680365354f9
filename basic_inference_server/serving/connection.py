"""One client connection of the front: HTTP/1.1 parsed by ``httptools`` on the event loop.

Every read has a deadline: a request's headers within ``HEADER_TIMEOUT`` (of the
connection for the first request, of its first byte for later ones), the body within
``BODY_TIMEOUT`` of the headers, the next request within ``KEEPALIVE_TIMEOUT`` of the
last answer. A client that misses one is disconnected, so slow clients cost a socket
and a few hundred bytes, never a thread. A body over the route's limit is refused (413)
from its ``Content-Length`` before it is read. Requests on one connection are answered
in order. Reading goes on while one is served, so a client that goes away is seen at
once: its request is cancelled (an endpoint server drops it unless it already runs, the
front frees its slot and closes the upstream connection). Reading pauses only when a
pipelined request waits behind the one being served.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote

import httptools

from .. import protocol
from ..errors import BadRequest, PayloadTooLarge, ServingError, TooManyConnections

log = logging.getLogger(__name__)

# Larger headers than this are refused: nothing the API takes needs more.
MAX_HEADER_BYTES = 64 * 1024
REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}


def status_line(status: int) -> bytes:
    return _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n".encode()


@dataclass
class Limits:
    """Deadlines and sizes every connection of the front obeys."""

    header_timeout: float = 60.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 30.0
    max_body: int = 64 * 1024 * 1024
    # Body limit of every route but the data path (management calls are small).
    max_other_body: int = 1024 * 1024


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
    key: Any = None  # tenants.keys.ApiKey, with API_KEYS on
    limits: Any = None  # tenants.limits.Decision: RateLimit-* headers of the answer


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


Handler = Callable[[Request], Awaitable[Answer]]


def error_answer(err: ServingError, meta: dict[str, Any]) -> Answer:
    return Answer(err.status, [("Content-Type", protocol.JSON), *err.headers()],
                  protocol.error_body(err, meta))


def call_wsgi(app: Callable[..., Any], req: Request) -> Answer:
    """Run a WSGI app on one complete request (blocking: call it off the loop)."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": req.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote(req.path, "latin-1"),
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
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [status, headers]
        return lambda _data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status = int(started[0].split(" ", 1)[0])
    # HEAD: the app's Content-Length is the one of the body a GET would get.
    skip = ("connection", "x-request-id") if req.method == "HEAD" else \
        ("content-length", "connection", "x-request-id")
    return Answer(status, [(k, v) for k, v in started[1] if k.lower() not in skip], body)


class HttpConnection(asyncio.Protocol):
    """Parses requests, enforces deadlines and limits, writes answers in order."""

    def __init__(self, server: Any) -> None:
        # server: the worker (limits, handler, meta, connection bookkeeping); see worker.py
        self.server = server
        self.limits: Limits = server.limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer: tuple[str, int] = ("", 0)
        self.tls = False
        self.timer: asyncio.TimerHandle | None = None
        self.queue: deque[Request] = deque()
        self.busy = False
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        # Parsing state of the request being read.
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.size = 0
        self.head_bytes = 0
        self.in_headers = False
        self.limit = 0

    # -- connection ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("", 0)
        self.tls = transport.get_extra_info("sslcontext") is not None
        if not self.server.connection_opened(self):
            err = TooManyConnections("the gateway holds its maximum of open connections; "
                                     "retry shortly", retry_after=1)
            self._write(error_answer(err, self.server.meta()), os.urandom(8).hex().encode(),
                        keep_alive=False)
            # Closed after a moment, not at once: closing with the client's request unread
            # would reset the connection before the client reads the answer.
            self.closing = True
            self.timer = self.loop.call_later(1.0, transport.close)
            return
        # As nginx: a new connection has HEADER_TIMEOUT to send its first request.
        self._arm(self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.closing = True
        if self.busy and self.task is not None:
            self.task.cancel()  # the client is gone: nobody would read the answer
        self.server.connection_closed(self)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.timer = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        # A missed read deadline (or an idle keep-alive connection): nginx closes too.
        self.timer = None
        self.close()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    @property
    def idle(self) -> bool:
        """No request being read or served: safe to close at once on a stop."""
        return not self.busy and not self.queue and not self.in_headers and not self.size

    # -- reading ------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.in_headers or not self.size:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(BadRequest("protocol upgrades are not supported"))
        except httptools.HttpParserError as exc:
            # A callback's own error (413 ...) reaches here wrapped by the parser.
            cause = exc.__context__
            if isinstance(cause, ServingError):
                self._refuse(cause)
            elif not self.closing:
                self._refuse(BadRequest(f"malformed HTTP request: {exc}"))
        else:
            if self.in_headers and self.head_bytes > MAX_HEADER_BYTES:
                self._refuse(BadRequest(f"request headers over {MAX_HEADER_BYTES} bytes"))

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body = bytearray()
        self.size = 0
        self.in_headers = True
        self._arm(self.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.in_headers = False
        self.head_bytes = 0
        path = self.url.split(b"?", 1)[0]
        self.limit = (self.limits.max_body if path in (b"/run", b"/jobs")
                      else self.limits.max_other_body)
        for name, value in self.headers:
            if name == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    raise BadRequest("invalid Content-Length") from None
                if size > self.limit:
                    raise PayloadTooLarge(f"body of {size} bytes is over the limit of "
                                          f"{self.limit} bytes", MAX_REQUEST_SIZE=self.limit)
                # Filled in place: a large body is held once, never joined from pieces.
                self.body = bytearray(size)
            elif name == b"expect" and value.lower() == b"100-continue" and not self.busy:
                # (Not while an answer is due first: the client sends its body unasked.)
                assert self.transport is not None
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._arm(self.limits.body_timeout)

    def on_body(self, body: bytes) -> None:
        start = self.size
        self.size += len(body)
        if self.size > self.limit:
            raise PayloadTooLarge(f"body is over the limit of {self.limit} bytes",
                                  MAX_REQUEST_SIZE=self.limit)
        if self.size <= len(self.body):
            self.body[start:self.size] = body
        else:
            self.body += body  # chunked: no length known in advance

    def on_message_complete(self) -> None:
        self._disarm()
        parsed = httptools.parse_url(self.url)
        rid = next((v for n, v in self.headers if n == b"x-request-id"), None)
        request = Request(
            method=self.parser.get_method().decode("ascii", "replace"),
            path=(parsed.path or b"/").decode("latin-1"),
            query=(parsed.query or b"").decode("latin-1"),
            headers=self.headers,
            # Filled in place and only read from now on; bytes-like wherever it goes.
            body=cast(bytes, self.body),
            request_id=(rid.decode() if rid is not None and REQUEST_ID.match(rid)
                        else os.urandom(8).hex()),
            keep_alive=bool(self.parser.should_keep_alive()),
            peer=self.peer,
            tls=self.tls,
        )
        self.body = bytearray()
        self.size = 0
        self.queue.append(request)
        if self.busy:
            assert self.transport is not None
            self.transport.pause_reading()
        else:
            self.busy = True
            self.task = self.loop.create_task(self._serve())

    def _refuse(self, err: ServingError) -> None:
        """Answer an error about the request being read, then close: its bytes are unread."""
        self._disarm()
        self.closing = True
        if not self.busy:
            rid = next((v for n, v in self.headers if n == b"x-request-id"), None)
            ok = rid is not None and REQUEST_ID.match(rid)
            self._write(error_answer(err, self.server.meta()),
                        rid if ok and rid else os.urandom(8).hex().encode(), keep_alive=False)
        assert self.transport is not None
        self.transport.close()

    # -- answering ----------------------------------------------------------------
    async def _serve(self) -> None:
        try:
            while self.queue and not self.closing:
                request = self.queue.popleft()
                try:
                    answer = await self.server.handle(request)
                except Exception:  # noqa: BLE001 - a handler's bug must not leave a caller hanging
                    log.exception("error answering %s %s", request.method, request.path[:200])
                    answer = error_answer(ServingError("internal error in the server; see its "
                                                       "log"), {})
                keep = request.keep_alive and self.server.alive
                self._write(answer, request.request_id.encode(), keep,
                            head_only=request.method == "HEAD")
                if not keep:
                    self.close()
                    return
        finally:
            self.busy = False
        if not self.closing and self.transport is not None:
            if not self.in_headers and not self.size:
                # Else the next request's own header or body deadline is running.
                self._arm(self.limits.keepalive_timeout)
            self.transport.resume_reading()

    def _write(self, answer: Answer, request_id: bytes, keep_alive: bool,
               head_only: bool = False) -> None:
        assert self.transport is not None
        parts = [status_line(answer.status)]
        for name, value in answer.headers:
            parts.append(f"{name}: {value}\r\n".encode("latin-1"))
        if not head_only or not any(n.lower() == "content-length" for n, _v in answer.headers):
            parts.append(b"Content-Length: %d\r\n" % len(answer.body))
        parts.append(b"X-Request-ID: %s\r\n" % request_id)
        if not keep_alive:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        if not head_only:
            parts.append(answer.body)
        self.transport.write(b"".join(parts))

