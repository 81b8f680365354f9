"""One connection from the front to an endpoint server, and a streamed answer read on it.

:class:`Connection` writes one request at a time and parses the answer with
``httptools`` as it arrives: a whole answer is handed over once complete, a stream
(:data:`STREAM_TYPES`, or chunked without a length) as soon as its head is read, its
body then read piece by piece (:class:`UpstreamStream`). The pool and the resend policy
are :mod:`.upstream`'s.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httptools

from ..errors import ServingError, UpstreamDropped
from ..wire.deadline import Deadline

if TYPE_CHECKING:
    from .upstream import Upstream

log = logging.getLogger(__name__)

# (Server-Timing: the endpoint server's stages, only sent with SERVER_TIMING on.)
PASS_HEADERS = (b"content-type", b"content-disposition", b"retry-after", b"server-timing")
# The media types of streamed answers (streams.SSE_TYPE, streams.NDJSON_TYPE), as the
# start of a Content-Type: one check per answer tells a stream from a whole answer.
STREAM_TYPES = (b"text/event-stream", b"application/x-ndjson")
# Bytes of a stream received and not yet read past which the connection stops reading
# (the endpoint's writes then back up, and its producer waits).
READ_AHEAD = 64 * 1024
# Bodies larger than this are written in slices of this size.
WRITE_SLICE = 256 * 1024
@dataclass
class UpstreamResponse:
    """A complete answer of an endpoint server."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    # Which worker answered: "g<generation>w<slot>" of its own socket, or "any" (shared).
    worker: str = "any"
    # A streamed answer: its body as it arrives (``body`` stays empty).
    stream: UpstreamStream | None = None


# How a stream ended (the ``reason`` label of bis_streams_ended_total).
DONE, ERROR, CLIENT_GONE, TIMEOUT = "done", "error", "client_gone", "timeout"


@dataclass
class StreamEnd:
    """How a stream ended, told to what it held (:meth:`UpstreamStream.hold`)."""

    reason: str = CLIENT_GONE
    # The endpoint's own status for its health: 200 (done), 500 (its error event).
    status: int = 200
    # The front's error when it ended the stream (cut, timeout, invalid): it says why.
    error: ServingError | None = None
    units: float = 0.0  # the USAGE of its done event, when the front took it out
    chunks: int = 0  # chunk events passed on


Hold = Callable[[StreamEnd], "Awaitable[None] | None"]


class _Reset(Exception):
    """The server reset the connection without reading the request (it never ran)."""


class _Closed(Exception):
    """The server closed the connection after reading the request, before answering it."""


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to a server, one request at a time."""

    def __init__(self) -> None:
        # Made by its loop's connect (the loop is asked once per connection, not per
        # request: asking costs a system call).
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[UpstreamResponse] | None = None
        # The answer's deadline: one timer per connection, moved only when a request's
        # deadline is earlier than it (a timer per request costs the front two uvloop
        # handles on every request).
        self.deadline = Deadline(self.loop, self._expired)
        self.resp = UpstreamResponse()
        self.chunks: list[bytes] = []
        self.received = False
        self.open = False
        self.keep_alive = False
        self.idle_since = 0.0
        self.drained: asyncio.Future[None] | None = None
        # A streamed answer: pieces received and not read yet, and its state.
        self.content_type = b""
        self.chunked = False
        self.streaming = False
        self.pending: deque[bytes] = deque()
        self.pending_size = 0
        self.paused = False  # reading stopped: READ_AHEAD bytes wait to be read
        self.ended = False
        self.reader: asyncio.Future[None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """asyncio: the connection is open."""
        self.transport = transport  # type: ignore[assignment]
        self.open = True

    def data_received(self, data: bytes) -> None:
        """asyncio: feed the answer's bytes to the parser."""
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        """asyncio: the connection closed; a reset before any byte is a resend."""
        self.open = False
        self.deadline.cancel()
        if isinstance(exc, (ConnectionResetError, BrokenPipeError)) and not self.received:
            self._fail(_Reset())
        else:
            self._fail(_Closed())

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        """httptools: keep the headers passed to the client."""
        lower = name.lower()
        if lower in PASS_HEADERS:
            self.resp.headers.append((name, value))
            if lower == b"content-type":
                self.content_type = value
        elif lower == b"transfer-encoding":
            self.chunked = b"chunked" in value.lower()

    def on_headers_complete(self) -> None:
        """httptools: the head is in; a stream's answer starts now."""
        if self.chunked or self.content_type.lower().startswith(STREAM_TYPES):
            # A stream: its head is the answer's start; its body comes to read().
            self.streaming = True
            self.resp.status = self.parser.get_status_code()
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(self.resp)

    def on_body(self, body: bytes) -> None:
        """httptools: keep a body chunk (a stream's, paused past the read-ahead)."""
        if not self.streaming:
            self.chunks.append(body)
            return
        self.pending.append(body)
        self.pending_size += len(body)
        if self.pending_size > READ_AHEAD and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        """httptools: the answer is complete."""
        # llhttp answers should_keep_alive() correctly only inside this callback.
        self.keep_alive = bool(self.parser.should_keep_alive())
        if self.streaming:
            self.ended = True
            self._wake()
            return
        self.resp.status = self.parser.get_status_code()
        self.resp.body = b"".join(self.chunks)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.resp)

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()
        self._wake()

    def _wake(self) -> None:
        if self.reader is not None and not self.reader.done():
            self.reader.set_result(None)

    async def read(self, timeout: float | None = None) -> bytes | None:
        """A stream's bytes received since the last read (waiting up to ``timeout``
        seconds for some: TimeoutError past it); None once it ended. Raises
        :class:`_Closed` when the connection closed before the stream's end."""
        while not self.pending:
            if self.ended:
                return None
            if not self.open:
                raise _Closed()
            reader = self.reader = self.loop.create_future()
            timer = None if timeout is None else self.loop.call_later(timeout, _expire, reader)
            try:
                await reader
            finally:
                self.reader = None
                if timer is not None:
                    timer.cancel()
        piece = self.pending.popleft() if len(self.pending) == 1 else b"".join(self.pending)
        self.pending.clear()
        if self.paused:
            self.paused = False
            if self.open and self.transport is not None:
                self.transport.resume_reading()
        self.pending_size = 0
        return piece

    def pause_writing(self) -> None:
        """asyncio: the socket's buffer is full; writes wait for the drain."""
        self.drained = self.loop.create_future()

    def resume_writing(self) -> None:
        """asyncio: the buffer drained; writes go on."""
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None

    async def send(self, head: bytes, body: bytes, timeout: float) -> UpstreamResponse:
        """Write one request and wait for its answer (or, for a stream, its head) at most
        ``timeout`` seconds: TimeoutError past it.

        A large body is written in slices, each when the socket has taken the last:
        the transport never holds a copy of the whole body. The deadline is one timer on
        the answer's future, not ``asyncio.wait_for``, which would run the send as a
        task of its own: the front pays that on every request.
        """
        assert self.transport is not None
        if not self.open or self.transport.is_closing():
            # Closed (its worker died, the server dropped it) before a byte of this
            # request went out: it never ran.
            raise _Reset()
        self.resp = UpstreamResponse()
        self.chunks = []
        self.received = False
        self.keep_alive = False
        self.content_type = b""
        self.chunked = False
        self.streaming = self.ended = False
        waiter = self.waiter = self.loop.create_future()
        self.deadline.set(timeout)
        try:
            if len(body) <= WRITE_SLICE:
                self.transport.write(head + body)
            else:
                self.transport.write(head)
                view = memoryview(body)
                for start in range(0, len(body), WRITE_SLICE):
                    if self.drained is not None:
                        await asyncio.wait([self.drained, waiter],
                                           return_when=asyncio.FIRST_COMPLETED)
                    if waiter.done() or not self.open:
                        break  # answered (an error), timed out or closed early: stop sending
                    self.transport.write(view[start:start + WRITE_SLICE])
            return await waiter
        finally:
            self.deadline.clear()

    def _expired(self) -> None:
        if self.waiter is not None:
            _expire(self.waiter)

    def close(self) -> None:
        """Close the connection."""
        self.open = False
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class UpstreamStream:
    """A streamed answer's body as it arrives, on the connection it holds.

    Read it with :meth:`read` (or ``async for``), then :meth:`aclose` it, always: that
    gives the connection back to the pool if the stream ended cleanly, else closes it
    (the endpoint server sees the disconnect and stops the work), and runs what the
    request held for the stream's life (:meth:`hold`), told how it ended (:attr:`end`).
    """

    def __init__(self, upstream: Upstream, path: str, conn: Connection, name: str) -> None:
        self.upstream = upstream
        self.path = path
        self.conn = conn
        self.name = name
        self.end = StreamEnd()
        self.route: dict[str, Any] = {}  # the route it came by (its stream timeouts)
        self.finished = False  # read to its end
        self.closed = False
        self._holds: list[Hold] = []
        # The worker stays busy for the stream's life (least-loaded balancing).
        upstream.board.add(path, 1)

    def hold(self, release: Hold) -> None:
        """Call ``release`` (sync or async) with :attr:`end` when the stream is closed;
        the last one held is released first."""
        self._holds.append(release)

    async def read(self, timeout: float | None = None) -> bytes | None:
        """The bytes received since the last read; None at the stream's end. TimeoutError
        when none came within ``timeout`` seconds; :class:`..errors.UpstreamDropped`
        when the endpoint closed the connection before the stream's end."""
        try:
            piece = await self.conn.read(timeout)
        except _Closed:
            raise UpstreamDropped(f"endpoint {self.name} closed its stream before its end",
                                  SIGNATURE=self.name) from None
        if piece is None:
            self.finished = True
        return piece

    def __aiter__(self) -> UpstreamStream:
        return self

    async def __anext__(self) -> bytes:
        piece = await self.read()
        if piece is None:
            raise StopAsyncIteration
        return piece

    async def aclose(self) -> None:
        """Give the connection back (ended cleanly) or close it, then release the holds."""
        if self.closed:
            return
        self.closed = True
        conn = self.conn
        if self.finished and conn.keep_alive and conn.open:
            self.upstream._give_back(self.path, conn)
        else:
            conn.close()
        self.upstream.board.add(self.path, -1)
        for release in reversed(self._holds):
            try:
                done = release(self.end)
                if inspect.isawaitable(done):
                    await done
            except Exception:  # noqa: BLE001 - one failed release must not keep the others
                log.exception("releasing stream of %s failed", self.name)


