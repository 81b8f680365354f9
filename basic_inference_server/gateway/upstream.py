"""Keep-alive connections from the front to the endpoint servers' Unix sockets.

The front is on every request's path, so this client is lean: a LIFO pool of
connections per server socket, the request written in one ``sendall``, and the answer
parsed by ``httptools`` (llhttp, the parser uvicorn uses). Measured on the no-op
endpoint, a forwarded request cost about 185 us of front CPU through urllib3 and
100 us through ``http.client``, two thirds of which went to its ``email``-based header
parsing; this client needs about a third of that.
"""

from __future__ import annotations

import itertools
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import httptools

from ..errors import Unavailable, UpstreamTimeout
from .loadboard import LoadBoard

PASS_HEADERS = (b"content-type", b"content-disposition", b"retry-after")
_SMALL_BODY = 64 * 1024


@dataclass
class UpstreamResponse:
    """A complete answer of an endpoint server."""

    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False
    keep_alive: bool = False
    # Which worker answered: "g<generation>w<slot>" of its own socket, or "any" (shared).
    worker: str = "any"
    parser: httptools.HttpResponseParser | None = field(default=None, repr=False)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    # httptools parser callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in PASS_HEADERS:
            self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        # llhttp answers should_keep_alive() correctly only inside this callback.
        assert self.parser is not None
        self.status = self.parser.get_status_code()
        self.keep_alive = bool(self.parser.should_keep_alive())
        self.complete = True


class NotConnected(Unavailable):
    """Could not connect: the request was never sent, so another worker may take it."""


class Dropped(Unavailable):
    """The server read the request, then closed without answering: its worker died on it."""


class _Closed(Exception):
    """The server closed the connection after reading the request, before answering it."""


class Connection:
    """One keep-alive HTTP/1.1 connection to a server's Unix socket."""

    def __init__(self, path: str, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise

    def post(self, target: bytes, body: bytes, timeout: float,
             extra: bytes = b"") -> tuple[UpstreamResponse, bool]:
        """Send one request (``extra``: header lines to add); return the answer and whether
        the connection stays usable."""
        self.sock.settimeout(timeout)
        head = (b"POST " + target + b" HTTP/1.1\r\nHost: localhost\r\n" + extra
                + b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        if len(body) <= _SMALL_BODY:
            self.sock.sendall(head + body)
        else:
            self.sock.sendall(head)
            self.sock.sendall(body)
        resp = UpstreamResponse()
        parser = resp.parser = httptools.HttpResponseParser(resp)
        while not resp.complete:
            data = self.sock.recv(262144)
            if not data:
                raise _Closed
            parser.feed_data(data)
        resp.parser = None
        return resp, resp.keep_alive

    def close(self) -> None:
        self.sock.close()


class Upstream:
    """Forwards requests to endpoint servers over pooled keep-alive connections."""

    def __init__(self, board: LoadBoard | None = None, max_idle: int = 64) -> None:
        self.max_idle = max_idle
        self.board = board or LoadBoard(rows=1)
        self._idle: dict[str, list[Connection]] = {}
        self._lock = threading.Lock()
        self._turn = itertools.count()

    def _by_load(self, sockets: list[str]) -> list[str]:
        """Worker sockets, least busy first (counted over all front processes); ties rotate."""
        start = next(self._turn) % len(sockets)
        rotated = sockets[start:] + sockets[:start]
        return sorted(rotated, key=self.board.load)

    def forward(self, route: dict[str, Any], name: str, body: bytes,
                customer: str | None = None) -> UpstreamResponse:
        """Send a ``/run`` to the least busy worker of an endpoint.

        Each worker process listens on a socket of its own besides the shared one, so
        the front balances requests itself (least outstanding requests). A worker
        that cannot be reached (it just died) hands the request to a sibling: nothing
        was sent, so nothing can run twice. A worker that dies running the request
        makes it a 503 at once or, with ``RETRY_ON_CRASH``, one more try on a sibling.
        ``customer`` is passed on as ``X-Customer-ID`` (the model manager picks
        customer-specific models by it).
        """
        extra = b"X-Customer-ID: " + customer.encode("latin-1") + b"\r\n" if customer else b""
        sockets = route.get("workers") or []
        timeout = float(route["timeout"])
        # One more try on a sibling after a worker died running the request, where the
        # endpoint says its requests may run twice.
        retries = 1 if route.get("retry_on_crash") else 0
        candidates = (self._by_load(sockets) if len(sockets) > 1 else list(sockets))[:2]
        # Last, the shared socket: every live worker of the endpoint, of any generation,
        # accepts there, so the request still finds one while the route table lags a
        # reload or a scale-down (whose stopping workers no longer accept).
        candidates.append(route["socket"])
        for i, path in enumerate(candidates):
            # Under the lock: a lost update between threads would skew the counts for good.
            with self._lock:
                self.board.add(path, 1)
            try:
                resp = self.post(path, name, body, timeout, extra)
            except NotConnected:
                self._drop(path)
                if i == len(candidates) - 1:
                    raise
            except Dropped:
                if not retries or i == len(candidates) - 1:
                    raise
                retries -= 1
            else:
                if path != route["socket"]:
                    resp.worker = path.rsplit(".", 1)[-1]
                return resp
            finally:
                with self._lock:
                    self.board.add(path, -1)
        raise NotConnected(f"endpoint {name} has no reachable worker", retry_after=1,
                           SIGNATURE=name)

    def _drop(self, path: str) -> None:
        """Forget a socket that refuses connections (its worker is gone)."""
        with self._lock:
            conns = self._idle.pop(path, [])
        for conn in conns:
            conn.close()

    def _take(self, path: str) -> Connection | None:
        with self._lock:
            idle = self._idle.get(path)
            return idle.pop() if idle else None

    def _give_back(self, path: str, conn: Connection) -> None:
        with self._lock:
            idle = self._idle.setdefault(path, [])
            if len(idle) < self.max_idle:
                idle.append(conn)
                return
        conn.close()

    def post(self, path: str, name: str, body: bytes, timeout: float,
             extra: bytes = b"") -> UpstreamResponse:
        """POST ``body`` to ``/run`` of the server at ``path``; failures become 503 / 504."""
        for attempt in (0, 1):
            conn = self._take(path) if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                try:
                    conn = Connection(path, timeout)
                except OSError as exc:
                    raise NotConnected(f"endpoint {name} is not accepting connections: "
                                       f"{exc.strerror or exc}", retry_after=1,
                                       SIGNATURE=name) from None
            try:
                resp, keep = conn.post(b"/run", body, timeout, extra)
            except TimeoutError:
                conn.close()
                raise UpstreamTimeout(f"endpoint {name} did not answer within {timeout:g} s",
                                      SIGNATURE=name) from None
            except (ConnectionResetError, BrokenPipeError):
                # On a Unix socket, EPIPE / ECONNRESET mean the server closed the connection
                # without reading this request (an idle kept-alive connection it dropped, or
                # a stopping worker's backlog): it never ran, so it may be sent again.
                conn.close()
                if reused:
                    continue
                raise NotConnected(f"endpoint {name} closed the connection unread; retry "
                                   f"shortly", retry_after=1, SIGNATURE=name) from None
            except _Closed:
                # End of file after the server read the request: its worker died running
                # it. Sending it again could run it twice (and kill a second worker).
                conn.close()
                raise Dropped(f"endpoint {name} dropped the connection (its worker may "
                              f"have died); retry shortly", retry_after=1,
                              SIGNATURE=name) from None
            except httptools.HttpParserError as exc:
                conn.close()
                raise Unavailable(f"endpoint {name} sent an invalid answer: {exc}",
                                  retry_after=1, SIGNATURE=name) from None
            except OSError as exc:
                conn.close()
                raise Unavailable(f"endpoint {name} is not accepting connections: "
                                  f"{exc.strerror or exc}", retry_after=1, SIGNATURE=name) from None
            if keep:
                self._give_back(path, conn)
            else:
                conn.close()
            return resp
        raise Unavailable(f"endpoint {name} keeps dropping connections", retry_after=1,
                          SIGNATURE=name)
