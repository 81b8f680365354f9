"""The gateway front's gunicorn worker: the shared event-loop worker serving :class:`.app.Front`.

Open connections are capped over all front processes (``MAX_CONNECTIONS``, counted on
the shared load board); past the cap a new connection gets a 503
``too_many_connections`` and is closed.
"""

from __future__ import annotations

import ssl
import sys
from typing import Any

from ..wire.connection import Answer, HttpConnection, Request
from ..wire.worker import LoopWorker
from . import metrics
from .app import Front

CONNECTIONS = "#connections"
# How long a thread of the front's pool may keep the GIL while the loop asks for it.
# Scans of large bodies run there in C calls of a MiB or less; Python's default (5 ms)
# would let each keep the loop, and every request on it, waiting that long.
GIL_SWITCH_S = 0.0005


class FrontWorker(LoopWorker):
    """The gateway front's worker class: serves :class:`.app.Front`."""

    front: Front

    def load_wsgi(self) -> None:
        """gunicorn's hook to take the loaded app: the front, kept as ``front``."""
        self.front = self.app.front()

    def sched_batch(self) -> bool:
        """SCHED_BATCH, as the front's spec says."""
        return self.app.spec.sched_batch

    def started(self) -> None:
        """Start the front on this worker's loop."""
        sys.setswitchinterval(GIL_SWITCH_S)
        self.limits = self.front.limits
        self.front.start()

    def tls(self) -> ssl.SSLContext | None:
        """The front's TLS context (None: plain HTTP)."""
        return self.front.tls

    def meta(self) -> dict[str, Any]:
        """The front's metadata of every answer."""
        return self.front.meta()

    async def handle(self, request: Request) -> Answer:
        """The front's answer to ``request``."""
        return await self.front.handle(request)

    def connection_opened(self, conn: HttpConnection) -> bool:
        """Count a new connection over all front processes; False past the cap."""
        if self.front.board.load(CONNECTIONS) >= self.front.spec.max_connections:
            return False
        self.front.board.add(CONNECTIONS, 1)
        return super().connection_opened(conn)

    def connection_closed(self, conn: HttpConnection) -> None:
        """Uncount a connection counted by :meth:`connection_opened`."""
        if conn in self.connections:
            self.front.board.add(CONNECTIONS, -1)
        super().connection_closed(conn)

    def tick(self) -> None:
        """Close upstream connections idle too long; write the refused admin attempts
        of a minute that is over."""
        self.front.upstream.close_idle()
        self.front.refusals.flush()

    def stopped(self) -> None:
        """Write the request metrics and refused admin attempts still counted in memory;
        close every upstream connection and the thread pool."""
        metrics.flush()
        self.front.refusals.flush(final=True)
        if self.front.key_gate is not None:
            self.front.key_gate.close()
        self.front.upstream.close_idle(0)
        if self.front.pool is not None:
            self.front.pool.shutdown(wait=False, cancel_futures=True)
