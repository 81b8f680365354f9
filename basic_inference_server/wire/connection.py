"""One client connection of the front and the endpoint servers: HTTP/1.1 parsed by
``httptools`` on the event loop.

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

Memory follows the bytes a client sends, never the ones it announces: a body's buffer
doubles as its bytes come, up to its ``Content-Length``, and the bodies being received
in one process share a budget (:class:`BodyBudget`; past it 503 ``overloaded``). A
client that leaves its answers unread gets no further one served: past the transport's
high-water mark the connection waits, and is dropped when ``send_timeout`` passes with
nothing taken. At most :data:`PIPELINE_DEPTH` parsed requests wait behind the one
served; the rest of a read stays unparsed, with reading paused, until they are answered.
After a request that ends the connection (``Connection: close``, HTTP/1.0) the requests
before it are answered and any further bytes are ignored.

A streamed answer (:attr:`Answer.stream`) is written chunk by chunk as it is made, with
chunked transfer encoding (raw and ended by closing for an HTTP/1.0 client). The next
chunk is asked for only when the transport is under its high-water mark, so a slow
reader pauses the producer and a stream holds at most about ``HIGH_WATER`` bytes here.
A client that goes away cancels the stream (its ``aclose`` runs): the producer stops
within one chunk.

Paths are taken as sent, never decoded: one with a ``%`` escape, an empty, ``.`` or
``..`` segment is refused (404), so routing and every check made on a path see one
string.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any, cast

import httptools

from ..errors import BadRequest, Overloaded, PayloadTooLarge, ServingError, TooManyConnections
from .deadline import Deadline
from .message import (
    Answer,
    BodyBudget,
    Handler,
    Limits,
    Request,
    call_wsgi,
    canonical,
    error_answer,
    new_request_id,
    not_canonical,
    status_line,
)

# The request and answer types live in .message; importable from here as well.
__all__ = ["Answer", "BodyBudget", "Handler", "HttpConnection", "Limits", "Request",
           "call_wsgi", "error_answer", "status_line"]

log = logging.getLogger(__name__)

# Larger headers than this are refused: nothing the API takes needs more.
MAX_HEADER_BYTES = 64 * 1024
# A body's buffer starts at this (or its Content-Length if smaller) and doubles. What a
# buffer holds past it counts against the process's BodyBudget, so a small request is
# never refused for the memory that large ones hold.
SMALL_BODY = 64 * 1024
# Parsed requests that may wait behind the one being served. A read is parsed in slices
# of PARSE_SLICE bytes, so one read of tiny requests adds at most a slice's worth
# (a request line takes 16 bytes or more) past the depth.
PIPELINE_DEPTH = 16
PARSE_SLICE = 4096
# Answer bytes a connection may leave unsent before it stops serving (uvicorn's
# HIGH_WATER_LIMIT); the transport resumes it under a quarter of this.
HIGH_WATER = 64 * 1024
REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


class HttpConnection(asyncio.Protocol):
    """Parses requests, enforces deadlines and limits, writes answers in order."""

    def __init__(self, server: Any) -> None:
        # server: the worker (limits, body budget, handler, meta, connections); see worker.py
        self.server = server
        self.limits: Limits = server.limits
        self.bodies: BodyBudget = server.bodies
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer: tuple[str, int] = ("", 0)
        self.tls = False
        self.deadline = Deadline(self.loop, self._expired)
        self.queue: deque[Request] = deque()
        self.busy = False
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        # False once no further request will be parsed: after one that ends the
        # connection, or a refusal (whose answer waits in ``refusal`` behind the queue).
        self.reading = True
        self.refusal: tuple[ServingError, bytes] | None = None
        # The unparsed rest of a read, while PIPELINE_DEPTH requests wait.
        self.held: memoryview | None = None
        self.write_paused = False
        self.writable: asyncio.Future[None] | None = None
        # Parsing state of the request being read.
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: bytes | bytearray = b""
        self.size = 0
        self.expected = -1  # its Content-Length; -1: none (chunked)
        self.charged = 0  # bytes of its buffer reserved on the process's BodyBudget
        self.head_bytes = 0
        self.in_headers = False
        self.limit = 0

    # -- connection ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """asyncio: a client connected; refused past the connection cap."""
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(HIGH_WATER)  # type: ignore[union-attr]
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("", 0)
        self.tls = transport.get_extra_info("sslcontext") is not None
        if not self.server.connection_opened(self):
            err = TooManyConnections("the gateway holds its maximum of open connections; "
                                     "retry shortly", retry_after=1)
            self._write(error_answer(err, self.server.meta()), new_request_id().encode(),
                        keep_alive=False)
            # Closed after a moment, not at once: closing with the client's request unread
            # would reset the connection before the client reads the answer.
            self.closing = True
            self.reading = False
            self.loop.call_later(1.0, transport.close)
            return
        # As nginx: a new connection has HEADER_TIMEOUT to send its first request.
        self._arm(self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        """asyncio: the client is gone; cancel what it asked for."""
        self.deadline.cancel()
        self.closing = True
        self.reading = False
        self.held = None
        self._release()
        if self.busy and self.task is not None:
            self.task.cancel()  # the client is gone: nobody would read the answer
        self.server.connection_closed(self)

    def pause_writing(self) -> None:
        """asyncio: the client reads slower than we write; answers wait."""
        # The transport holds HIGH_WATER unsent bytes: no further answer until it drains.
        self.write_paused = True

    def resume_writing(self) -> None:
        """asyncio: the client caught up; answers go on."""
        self.write_paused = False
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    def _arm(self, seconds: float) -> None:
        self.deadline.set(seconds)

    def _disarm(self) -> None:
        self.deadline.clear()

    def _expired(self) -> None:
        # A missed read deadline (or an idle keep-alive connection): nginx closes too.
        # A closed connection whose last answers were not taken in time is dropped.
        if self.closing and self.transport is not None:
            self.transport.abort()
        else:
            self.close()

    def close(self) -> None:
        """Close the connection once the client took what was written."""
        self.closing = True
        if self.transport is not None:
            self.transport.close()
            if self.transport.get_write_buffer_size():
                # The transport closes once the client took the rest, or at this deadline.
                self._arm(self.limits.send_timeout)

    @property
    def idle(self) -> bool:
        """No request being read or served: safe to close at once on a stop."""
        return (not self.busy and not self.queue and not self.in_headers and not self.size
                and self.held is None)

    # -- reading ------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        """asyncio: parse the client's bytes (held while reading is paused)."""
        if not self.reading:
            return  # after the last request, or a refusal: nothing more is parsed
        if self.held is not None:
            # Reading is paused, but a transport may still hand over what it had.
            self.held = memoryview(self.held.tobytes() + data)
        elif len(data) <= PARSE_SLICE:
            self._feed(data)
        else:
            self._parse(data)

    def _parse(self, data: bytes | memoryview) -> None:
        """Feed the parser one read, a slice at a time, holding back the rest while
        ``PIPELINE_DEPTH`` requests wait (one read may carry thousands)."""
        if len(data) <= PARSE_SLICE:
            self._feed(data)
            return
        view = memoryview(data)
        start, end = 0, len(view)
        while start < end and self.reading:
            if len(self.queue) >= PIPELINE_DEPTH:
                self.held = view[start:]
                assert self.transport is not None
                self.transport.pause_reading()
                return
            step = PARSE_SLICE
            if self.expected > 0 and not self.in_headers:
                # Within a body of known length: its bytes cannot hold requests.
                step = max(step, self.expected - self.size)
            self._feed(view[start:start + step])
            start += step

    def _feed(self, data: bytes | memoryview) -> None:
        if self.in_headers or not self.size:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(BadRequest("protocol upgrades are not supported"))
        except httptools.HttpParserError as exc:
            if not self.reading:
                return  # bytes after a request that ends the connection: ignored
            # A callback's own error (413 ...) reaches here wrapped by the parser.
            cause = exc.__context__
            self._refuse(cause if isinstance(cause, ServingError)
                         else BadRequest(f"malformed HTTP request: {exc}"))
        else:
            if self.in_headers and self.head_bytes > MAX_HEADER_BYTES:
                self._refuse(BadRequest(f"request headers over {MAX_HEADER_BYTES} bytes"))

    def on_message_begin(self) -> None:
        """httptools: a request starts; its header timeout runs."""
        self.url = b""
        self.headers = []
        self.body = b""
        self.size = 0
        self.expected = -1
        self.in_headers = True
        self._arm(self.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        """httptools: a piece of the request's URL."""
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        """httptools: one header, its name lower-cased."""
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        """httptools: the head is in; check the body's announced size."""
        self.in_headers = False
        self.head_bytes = 0
        path = self.url.split(b"?", 1)[0]
        self.limit = self.limits.body_limit(path)
        for name, value in self.headers:
            if name == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    raise BadRequest("invalid Content-Length") from None
                if size > self.limit:
                    raise PayloadTooLarge(f"body of {size} bytes is over the limit of "
                                          f"{self.limit} bytes", MAX_REQUEST_SIZE=self.limit)
                # Only noted: memory is taken as the body's bytes come (see _grow).
                self.expected = size
            elif name == b"expect" and value.lower() == b"100-continue" and not self.busy:
                # (Not while an answer is due first: the client sends its body unasked.)
                assert self.transport is not None
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._arm(self.limits.body_timeout)

    def on_body(self, body: bytes) -> None:
        """httptools: a piece of the body, refused (413) past the limit."""
        start = self.size
        size = start + len(body)
        if size > self.limit:
            raise PayloadTooLarge(f"body is over the limit of {self.limit} bytes", MAX_REQUEST_SIZE=self.limit)
        if not start and size == self.expected:
            self.body = body  # the whole body in one piece: kept as it came
        else:
            if size > len(self.body):
                self._grow(size)
            self.body[start:size] = body  # type: ignore[index]  # a bytearray by now
        self.size = size

    def _grow(self, need: int) -> None:
        """Room for ``need`` bytes: the buffer doubles (from SMALL_BODY), never past the
        body's Content-Length; what passes SMALL_BODY is taken from the process's budget."""
        have = len(self.body)
        cap = self.expected if self.expected >= 0 else self.limit
        new = min(cap, max(need, 2 * have, SMALL_BODY))
        charge = max(0, new - SMALL_BODY) - max(0, have - SMALL_BODY)
        if charge:
            if not self.bodies.take(charge):
                raise Overloaded(
                    f"this process holds its budget of {self.bodies.limit} bytes of request "
                    "bodies being received; retry shortly", retry_after=1)
            self.charged += charge
        if isinstance(self.body, bytearray):
            self.body += bytes(new - have)
        else:
            self.body = bytearray(new)

    def _release(self) -> None:
        """Give the budget back what the body being read reserved."""
        if self.charged:
            self.bodies.give(self.charged)
            self.charged = 0

    def on_message_complete(self) -> None:
        """httptools: the request is complete; hand it on."""
        self._disarm()
        parsed = httptools.parse_url(self.url)
        rid = next((v for n, v in self.headers if n == b"x-request-id"), None)
        body = self.body
        if len(body) > self.size and isinstance(body, bytearray):
            del body[self.size:]  # a chunked body's buffer past its end
        keep_alive = bool(self.parser.should_keep_alive())
        request = Request(
            method=self.parser.get_method().decode("ascii", "replace"),
            path=(parsed.path or b"/").decode("latin-1"),
            query=(parsed.query or b"").decode("latin-1"),
            headers=self.headers,
            # Filled in place and only read from now on; bytes-like wherever it goes.
            body=cast(bytes, body),
            request_id=(rid.decode() if rid is not None and REQUEST_ID.match(rid)
                        else new_request_id()),
            keep_alive=keep_alive,
            peer=self.peer,
            tls=self.tls,
            http10=self.parser.get_http_version() == "1.0",
            received=time.perf_counter(),
        )
        self.body = b""
        self.size = 0
        self.expected = -1
        if self.charged:
            self._release()  # a complete body is the request's: no longer "being received"
        if not keep_alive:
            self.reading = False  # the last request of this connection
        self.queue.append(request)
        if self.busy:
            assert self.transport is not None
            self.transport.pause_reading()
        else:
            self.busy = True
            self.task = self.loop.create_task(self._serve())

    def _refuse(self, err: ServingError) -> None:
        """Answer an error about the request being read, after the answers due before
        it, then close: its bytes are unread."""
        self._disarm()
        self.reading = False
        self.held = None
        self.body = b""
        self._release()
        rid = next((v for n, v in self.headers if n == b"x-request-id"), None)
        request_id = rid if rid is not None and REQUEST_ID.match(rid) else new_request_id().encode()
        assert self.transport is not None
        if self.busy:
            self.refusal = (err, request_id)  # written by _serve once the queue is answered
            self.transport.pause_reading()
            return
        self._write(error_answer(err, self.server.meta()), request_id, keep_alive=False)
        self.close()

    # -- answering ----------------------------------------------------------------
    async def _serve(self) -> None:
        try:
            while not self.closing:
                if not self.queue:
                    if self.held is None:
                        break
                    held, self.held = self.held, None
                    self._parse(held)  # the rest of a read held back: may queue requests
                    continue
                if self.write_paused and not await self._writable():
                    return
                request = self.queue.popleft()
                try:
                    answer = (await self.server.handle(request) if canonical(request.path)
                              else not_canonical(request.path, self.server.meta()))
                except Exception:  # noqa: BLE001 - a handler's bug must not leave a caller hanging
                    log.exception("error answering %s %s", request.method, request.path[:200])
                    answer = error_answer(ServingError("internal error in the server; see its log"), {})
                keep = request.keep_alive and self.server.alive
                if answer.stream is None:
                    self._write(answer, request.request_id.encode(), keep,
                                head_only=request.method == "HEAD")
                else:
                    keep = keep and not request.http10
                    if not await self._write_stream(answer, keep, request):
                        return
                if not keep:
                    self.close()
                    return
            if self.refusal is not None and not self.closing:
                err, request_id = self.refusal
                self._write(error_answer(err, self.server.meta()), request_id, keep_alive=False)
                self.close()
                return
        finally:
            self.busy = False
        if not self.closing and self.transport is not None:
            if not self.in_headers and not self.size:
                # Else the next request's own header or body deadline is running.
                self._arm(self.limits.keepalive_timeout)
            self.transport.resume_reading()

    async def _writable(self) -> bool:
        """Wait until the client takes the answers written; False when it took too little
        for ``send_timeout``: the connection is then dropped with them."""
        self.writable = self.loop.create_future()
        try:
            await asyncio.wait_for(self.writable, self.limits.send_timeout)
        except TimeoutError:
            self.closing = True
            assert self.transport is not None
            self.transport.abort()
            return False
        finally:
            self.writable = None
        return True

    def _head(self, answer: Answer, request_id: bytes, keep_alive: bool,
              length: bytes | None) -> list[bytes]:
        """The status line and headers; ``length`` is the framing header's line."""
        parts = [status_line(answer.status), answer.raw_headers]
        for name, value in answer.headers:
            parts.append(f"{name}: {value}\r\n".encode("latin-1"))
        if length is not None:
            parts.append(length)
        parts.append(b"X-Request-ID: %s\r\n" % request_id)
        if not keep_alive:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        return parts

    def _write(self, answer: Answer, request_id: bytes, keep_alive: bool,
               head_only: bool = False) -> None:
        assert self.transport is not None
        length = None
        if not head_only or not any(n.lower() == "content-length" for n, _v in answer.headers):
            length = b"Content-Length: %d\r\n" % len(answer.body)
        parts = self._head(answer, request_id, keep_alive, length)
        if not head_only:
            parts.append(answer.body)
        self.transport.write(b"".join(parts))

    async def _write_stream(self, answer: Answer, keep_alive: bool, request: Request) -> bool:
        """Write a streamed answer as its chunks come; False when the connection was
        dropped on the way (the client took nothing for ``send_timeout``)."""
        assert self.transport is not None and answer.stream is not None
        chunked = not request.http10
        self.transport.write(b"".join(self._head(
            answer, request.request_id.encode(), keep_alive,
            b"Transfer-Encoding: chunked\r\n" if chunked else None)))
        try:
            if request.method != "HEAD" and not await self._send_chunks(answer.stream, chunked):
                return False
        except Exception:  # noqa: BLE001 - a producer's bug: the client sees a cut stream
            # The producers (endpoint servers, the front) turn their errors into error
            # events; what escapes them can only be told by not ending the stream.
            log.exception("stream of request %s failed", request.request_id)
            self.closing = True
            self.transport.abort()
            return False
        finally:
            await answer.stream.aclose()
        return True

    async def _send_chunks(self, stream: AsyncGenerator[bytes, None], chunked: bool) -> bool:
        assert self.transport is not None
        async for chunk in stream:
            if chunk:  # (an empty chunk would end the answer)
                self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            if self.write_paused and not await self._writable():
                return False
        if chunked:
            self.transport.write(b"0\r\n\r\n")
        return True
