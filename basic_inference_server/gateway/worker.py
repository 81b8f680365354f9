"""The gateway front's gunicorn worker: gthread, with threads that stay on busy connections.

In gunicorn's gthread worker, every request on a kept-alive connection travels from
the poller thread to a pool thread and back (a pipe write and two thread wake-ups). On
the front, which adds a hop to every request, those hand-offs were most of the added
latency. Here the thread that served a request waits a short while for the next one on
the same connection and serves it directly; a connection that stays quiet goes back to
the poller as usual, so idle clients do not hold threads.
"""

from __future__ import annotations

import select
import socket
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

# How long a thread waits for the next request on its connection before handing the
# connection back to the poller.
LINGER_S = 0.25


def _readable(sock: socket.socket, timeout: float) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    try:
        return bool(poller.poll(timeout * 1000))
    except OSError:
        return False


class StickyThreadWorker(ThreadWorker):
    """gthread worker whose threads keep serving a connection while requests keep coming."""

    def handle(self, conn: Any) -> Any:
        result = super().handle(conn)
        while result is True and self.alive and conn.parser is not None:
            buffered = bool(conn.parser.unreader.buf.getvalue())
            if not buffered and not _readable(conn.sock, LINGER_S):
                return result
            conn.data_ready = True
            result = super().handle(conn)
        return result
