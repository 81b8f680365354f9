"""Raw-socket attackers and a peak-RSS sampler, for the connection-level hostile tests.

A hostile client is a plain socket: it sends exactly the bytes a test writes and reads
nothing unless told to (``requests`` would read every answer). :class:`PeakRss` samples
the summed RSS of some processes from a thread while an attack runs, so a test compares
the peak growth, not one reading taken after the memory was freed.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import httptools
import psutil

from tests.security.hostile import rss


def tcp(port: int, rcvbuf: int | None = None) -> socket.socket:
    """A connected TCP socket to 127.0.0.1:``port`` (``rcvbuf``: a small receive buffer,
    so a client that does not read leaves the answers in the server)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    return sock


def send_all_or_stall(sock: socket.socket, data: bytes) -> int:
    """Send ``data``; a server that stops reading stalls it: the bytes it took are returned."""
    sent = 0
    sock.settimeout(2)
    try:
        while sent < len(data):
            sent += sock.send(data[sent:sent + 65536])
    except (TimeoutError, OSError):
        pass
    sock.settimeout(10)
    return sent


def read_answers(sock: socket.socket, count: int) -> list[int]:
    """Read until ``count`` answers came or the stream ends; their statuses in order."""
    statuses: list[int] = []

    class Sink:
        def on_message_complete(self) -> None:
            statuses.append(parser.get_status_code())

    parser = httptools.HttpResponseParser(Sink())
    while len(statuses) < count:
        try:
            data = sock.recv(65536)
        except OSError:  # timeouts included
            break
        if not data:
            break
        parser.feed_data(data)
    return statuses


class PeakRss:
    """Samples ``rss(procs)`` every 50 ms from a thread, inside a ``with`` block."""

    def __init__(self, procs: list[psutil.Process]) -> None:
        self.procs = procs
        self.peak = self.start = rss(procs)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss(self.procs))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss(self.procs))

    @property
    def growth(self) -> int:
        return self.peak - self.start
