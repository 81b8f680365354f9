"""Persistent connections from the front's event loop to the endpoint servers.

Local endpoints are reached on their servers' Unix sockets, remote ones (``URLS``) over
TCP, or TLS for ``https://``, both the same way. The front is on every request's path,
so this client is lean: a LIFO pool of idle connections per worker socket or URL, each
request written in one ``write`` and the answer parsed by ``httptools`` (llhttp, the
parser uvicorn uses) as it arrives. Waiting for an answer holds no thread: a stuck
endpoint costs the front a socket per request, nothing more, and the endpoint's
``MAX_IN_FLIGHT`` bounds even that (see :mod:`.app`).

An answer in a stream format (``text/event-stream``, ``application/x-ndjson``), or one
sent chunked without a length, comes back as soon as its head is read, with an
:class:`UpstreamStream` instead of a body: its bytes as they arrive. The connection is
the stream's for its whole life: it goes back to the pool only once the stream ended
cleanly, and is closed when the stream is closed early, so the endpoint server sees the
disconnect and stops the work. Past :data:`.upstream_conn.READ_AHEAD` unread bytes the connection stops
reading, so a slow caller pauses the endpoint's producer. A request is resent only
before any byte of its answer came.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import ssl
import time
from collections.abc import Callable
from enum import Enum
from typing import Any

import httptools

from ..errors import ServingError, Unavailable, UpstreamDropped, UpstreamTimeout
from ..traffic.remote import Credentials, RemoteURL, parse_url
from ..wire.message import Request
from . import metrics
from .loadboard import LoadBoard
from .upstream_conn import (
    CLIENT_GONE,
    DONE,
    ERROR,
    TIMEOUT,
    Connection,
    StreamEnd,
    UpstreamResponse,
    UpstreamStream,
    _Closed,
    _Reset,
)

__all__ = ["CLIENT_GONE", "DONE", "ERROR", "TIMEOUT", "AttemptFailed",
           "Connection", "Failure", "Resend", "StreamEnd", "Upstream", "UpstreamResponse",
           "UpstreamStream", "_Closed", "_Reset", "classify", "resend"]

# Idle connections kept per worker socket, and how long one may stay idle: shorter than
# the servers' keep-alive (120 s), so the front, not the server, closes them.
MAX_IDLE = 64
IDLE_S = 60.0
# Idle connections to remote URLs are kept a shorter while: under the front's default
# KEEPALIVE_TIMEOUT (30 s), so a remote gateway rarely closes one as a request is sent.
REMOTE_IDLE_S = 20.0
# The request line and Host header of a local server's /run.
LOCAL_LEAD = b"POST /run HTTP/1.1\r\nHost: localhost\r\n"
# Seconds a TCP (and TLS) connection to a remote URL may take: a host that is down
# often drops packets instead of refusing, and the request must not wait its whole
# TIMEOUT for that. A connection that is not made means the request never ran.
CONNECT_S = 3.0


class Failure(Enum):
    """How one attempt failed, as far as whether the request ran."""

    STALE = "stale"  # a pooled connection the server had closed: the request was unread
    UNREACHABLE = "unreachable"  # no connection, or reset unread: it never ran
    DROPPED = "dropped"  # read, then closed unanswered: its worker died, it MAY have run
    TIMEOUT = "timeout"  # no answer in time: it may still be running
    INVALID = "invalid"  # an answer that is not HTTP


class Resend(Enum):
    """Whether a failed attempt may be sent again, and where."""

    NO = "no"
    SAME = "same"  # the same worker socket, on a new connection
    NEXT = "next"  # the next candidate socket


def resend(failure: Failure, *, last: bool, crash_resends: int) -> Resend:
    """The one resend policy: only a request that surely never ran goes again freely.

    One that may have run (its worker died on it) goes again only with
    ``RETRY_ON_CRASH`` (``crash_resends`` left), never twice: it could kill a second
    worker. One that timed out may still be running and is never resent.
    """
    if failure is Failure.STALE:
        return Resend.SAME
    if failure is Failure.UNREACHABLE or (failure is Failure.DROPPED and crash_resends):
        return Resend.NO if last else Resend.NEXT
    return Resend.NO


class AttemptFailed(Exception):
    """One attempt failed; ``failure`` says whether the request may go again."""

    def __init__(self, failure: Failure, message: str) -> None:
        super().__init__(message)
        self.failure = failure

    def error(self, name: str) -> ServingError:
        """What the caller gets when the request goes no further."""
        if self.failure is Failure.TIMEOUT:
            return UpstreamTimeout(str(self), SIGNATURE=name)
        cls = UpstreamDropped if self.failure is Failure.DROPPED else Unavailable
        return cls(str(self), retry_after=1, SIGNATURE=name)


def classify(exc: BaseException, reused: bool, name: str, timeout: float) -> AttemptFailed:
    """The one place a failed attempt's exception becomes a :class:`Failure`."""
    if isinstance(exc, _Reset):
        # On a Unix socket, a reset before any answer means the server closed the
        # connection without reading this request (an idle kept-alive connection it
        # dropped, or a stopping worker's backlog): it never ran.
        return AttemptFailed(Failure.STALE if reused else Failure.UNREACHABLE,
                             f"endpoint {name} closed the connection unread; retry shortly")
    if isinstance(exc, _Closed):
        return AttemptFailed(Failure.DROPPED, f"endpoint {name} dropped the connection (its "
                                              f"worker may have died); retry shortly")
    if isinstance(exc, TimeoutError):  # before OSError, of which it is one
        return AttemptFailed(Failure.TIMEOUT,
                             f"endpoint {name} did not answer within {timeout:g} s")
    if isinstance(exc, httptools.HttpParserError):
        return AttemptFailed(Failure.INVALID, f"endpoint {name} sent an invalid answer: {exc}")
    assert isinstance(exc, OSError)
    return AttemptFailed(Failure.UNREACHABLE, f"endpoint {name} is not accepting "
                                              f"connections: {exc.strerror or exc}")


def _local_lead(_path: str) -> bytes:
    return LOCAL_LEAD


class Upstream:
    """Forwards requests to endpoint servers over pooled keep-alive connections."""

    def __init__(self, board: LoadBoard | None = None) -> None:
        self.board = board or LoadBoard(rows=1)
        self._idle: dict[str, list[Connection]] = {}
        self._turn = itertools.count()
        # Remote URLs met so far, parsed once: a pool key found here is TCP, else a socket.
        self._remote: dict[str, RemoteURL] = {}
        self._tls: ssl.SSLContext | None = None
        self.credentials = Credentials()

    def _by_load(self, targets: list[str]) -> list[str]:
        """Worker sockets (or URLs), least busy first (counted over all front processes);
        ties rotate."""
        start = next(self._turn) % len(targets)
        rotated = targets[start:] + targets[:start]
        return sorted(rotated, key=self.board.load)

    async def forward(self, route: dict[str, Any], name: str, head: bytes,
                      body: bytes, timeout: float | None = None) -> UpstreamResponse:
        """Send a ``/run`` to the least busy worker of an endpoint.

        ``head``: the request's header lines to pass on (each ending in CRLF);
        ``timeout``: how long its answer is awaited (None: the route's TIMEOUT). Each
        worker process listens on a socket of its own besides the shared one, so the
        front balances requests itself (least outstanding requests). Whether a failed
        attempt goes again, and where, is :func:`resend`'s call.
        """
        sockets = route.get("workers") or []
        candidates = (self._by_load(sockets) if len(sockets) > 1 else list(sockets))[:2]
        # Last, the shared socket: every live worker of the endpoint, of any generation,
        # accepts there, so the request still finds one while the route table lags a
        # reload or a scale-down (whose stopping workers no longer accept).
        shared = route["socket"]
        candidates.append(shared)
        resp, path = await self._send(candidates, _local_lead, name, _tail(head, body),
                                      body, route, timeout)
        if path != shared:
            resp.worker = path.rsplit(".", 1)[-1]
        return resp

    async def forward_remote(self, route: dict[str, Any], name: str, head: bytes,
                             body: bytes, timeout: float | None = None) -> UpstreamResponse:
        """Send a ``/run`` to the least busy URL of a remote endpoint (``route["remote"]``).

        ``body`` already names the remote's SIGNATURE. With ``api_key`` the request
        carries ``Authorization: Bearer``. A URL that refuses the connection is
        skipped for the next one, as a local worker socket is; those the health probes
        found ``down`` come last.
        """
        remote = route["remote"]
        urls: list[str] = remote["urls"]
        for url in urls:
            if url not in self._remote:
                self._remote[url] = parse_url(url)
        if remote.get("api_key"):
            head += self.credentials.header(remote["api_key"], name)
        down = remote.get("down") or []
        up = [u for u in urls if u not in down] if down else urls
        candidates = (self._by_load(up) if len(up) > 1 else list(up)) + down
        resp, url = await self._send(candidates, self._lead, name, _tail(head, body), body,
                                     route, timeout)
        if resp.status == 401 and remote.get("api_key"):
            # The key may have been rotated: the next request reads it again.
            self.credentials.forget(remote["api_key"])
        resp.worker = url
        return resp

    def _lead(self, url: str) -> bytes:
        return self._remote[url].lead

    async def _send(self, candidates: list[str], lead: Callable[[str], bytes], name: str,
                    head: bytes, body: bytes, route: dict[str, Any],
                    timeout: float | None) -> tuple[UpstreamResponse, str]:
        """Try ``candidates`` in turn as :func:`resend` says; the answer and who gave it."""
        timeout = float(route["timeout"]) if timeout is None else timeout
        crash_resends = 1 if route.get("retry_on_crash") else 0
        i, pooled = 0, True
        while True:
            path = candidates[i]
            # One event loop per process writes this process's row: no lock needed.
            self.board.add(path, 1)
            try:
                resp = await self.attempt(path, name, lead(path) + head, body, timeout, pooled)
            except AttemptFailed as failed:
                step = resend(failed.failure, last=i == len(candidates) - 1,
                              crash_resends=crash_resends)
                if failed.failure is Failure.UNREACHABLE:
                    self._drop(path)
                if step is Resend.NO:
                    raise failed.error(name) from None
                if failed.failure is Failure.DROPPED:
                    crash_resends -= 1
                if step is Resend.NEXT:
                    i += 1
                pooled = step is Resend.NEXT  # SAME: a new connection, not another pooled one
                continue
            finally:
                self.board.add(path, -1)
            if resp.stream is not None:
                resp.stream.route = route
            return resp, path

    async def attempt(self, path: str, name: str, head: bytes, body: bytes, timeout: float,
                      pooled: bool = True) -> UpstreamResponse:
        """One try on the server at ``path``, on a pooled connection when ``pooled`` and
        one is idle, else a new one; raises :class:`AttemptFailed`."""
        conn = self._take(path) if pooled else None
        reused = conn is not None
        try:
            if conn is None:
                conn = await self._connect(path, timeout)
            resp = await conn.send(head, body, timeout)
        except (OSError, _Reset, _Closed, httptools.HttpParserError) as exc:
            if conn is not None:
                conn.close()
            raise classify(exc, reused, name, timeout) from None
        except asyncio.CancelledError:  # the caller left: the endpoint sees the close
            if conn is not None:
                conn.close()
            metrics.request_cancelled(name)
            raise
        if conn.streaming:
            resp.stream = UpstreamStream(self, path, conn, name)
            return resp
        if conn.keep_alive and conn.open:
            self._give_back(path, conn)
        else:
            conn.close()
        return resp

    def _drop(self, path: str) -> None:
        """Forget a socket that refuses connections (its worker is gone)."""
        for conn in self._idle.pop(path, []):
            conn.close()

    def _take(self, path: str) -> Connection | None:
        idle = self._idle.get(path)
        while idle:
            conn = idle.pop()
            if conn.open:
                return conn
        return None

    def _give_back(self, path: str, conn: Connection) -> None:
        idle = self._idle.setdefault(path, [])
        if len(idle) < MAX_IDLE:
            conn.idle_since = time.monotonic()
            idle.append(conn)
        else:
            conn.close()

    def close_idle(self, older_than: float = IDLE_S) -> None:
        """Close pooled connections idle longer than ``older_than`` seconds (0: all)."""
        now = time.monotonic()
        for path, idle in list(self._idle.items()):
            limit = min(older_than, REMOTE_IDLE_S) if path in self._remote else older_than
            keep = [c for c in idle if c.open and now - c.idle_since < limit]
            for conn in idle:
                if conn not in keep:
                    conn.close()
            if keep:
                self._idle[path] = keep
            else:
                del self._idle[path]

    async def _connect(self, path: str, timeout: float) -> Connection:
        loop = asyncio.get_running_loop()
        remote = self._remote.get(path)
        if remote is None:
            _transport, conn = await loop.create_unix_connection(Connection, path)
            return conn
        tls = self._client_tls() if remote.tls else None
        limit = min(CONNECT_S, timeout)
        try:
            _transport, conn = await asyncio.wait_for(loop.create_connection(
                Connection, remote.host, remote.port, ssl=tls,
                server_hostname=remote.host if tls else None), limit)
        except TimeoutError:
            # Not a TimeoutError for classify(): no connection, so the request never ran.
            raise ConnectionError(errno.ETIMEDOUT, f"no connection within {limit:g} s") from None
        return conn

    def _client_tls(self) -> ssl.SSLContext:
        """The client TLS context of https URLs: the system's CAs (and SSL_CERT_FILE)."""
        if self._tls is None:
            self._tls = ssl.create_default_context()
            self._tls.set_alpn_protocols(["http/1.1"])
        return self._tls


def head_lines(req: Request, remote: dict[str, Any] | None) -> bytes:
    """The header lines a ``/run`` passes on: its id, tenant and wanted stream format."""
    head = b"X-Request-ID: " + req.request_id.encode() + b"\r\n"
    # A remote called with a key of its own takes the tenant from that key (and refuses
    # an X-Customer-ID beside it).
    customer = remote is None or not remote["api_key"]
    if customer and req.key is not None:  # with API keys, the tenant is the key's
        head += b"X-Customer-ID: " + req.key.tenant.encode() + b"\r\n"
    for header, value in req.headers:
        if header == b"x-customer-id" and customer:
            head += b"X-Customer-ID: " + value + b"\r\n"
        elif header == b"accept":  # the stream format asked for
            head += b"Accept: " + value + b"\r\n"
    return head


def _tail(head: bytes, body: bytes) -> bytes:
    """The header lines after the request line and Host, through the blank line."""
    return (head + b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n")
