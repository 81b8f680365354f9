"""The gateway front's gunicorn worker: one uvloop event loop per process.

gunicorn keeps what it is good at (pre-fork, respawn, signals, the heartbeat, graceful
timeouts); each worker runs an event loop whose connections are
:class:`.connection.HttpConnection`. Thousands of idle or slow clients then cost
sockets, not threads, and waiting on an endpoint costs a future. Only blocking work
(management calls, job submission) goes to the front's bounded thread pool.

Open connections are capped over all front processes (``MAX_CONNECTIONS``, counted on
the shared load board); past the cap a new connection gets a 503
``too_many_connections`` and is closed. On SIGTERM the worker stops accepting,
closes idle keep-alive connections at once, lets requests in flight finish (their
answers say ``Connection: close``) and exits, within ``STOP_TIMEOUT`` at most.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import uvloop
from gunicorn.workers.base import Worker

from .app import Front
from .connection import HttpConnection

CONNECTIONS = "#connections"


class FrontWorker(Worker):
    """gunicorn worker class serving :class:`.app.Front` on an event loop."""

    loop: asyncio.AbstractEventLoop
    front: Front

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[HttpConnection] = set()
        self.quick = False

    def init_process(self) -> None:
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        super().init_process()

    def init_signals(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        self.loop.add_signal_handler(signal.SIGTERM, self._graceful)
        self.loop.add_signal_handler(signal.SIGINT, self._quick)
        self.loop.add_signal_handler(signal.SIGQUIT, self._quick)
        self.loop.add_signal_handler(signal.SIGUSR1, self.log.reopen_files)
        self.loop.add_signal_handler(signal.SIGWINCH, lambda: None)
        self.loop.add_signal_handler(signal.SIGABRT, self._abort)
        if hasattr(signal, "siginterrupt"):
            signal.siginterrupt(signal.SIGTERM, False)

    def _graceful(self) -> None:
        self.alive = False

    def _quick(self) -> None:
        self.alive = False
        self.quick = True

    def _abort(self) -> None:
        self.alive = False
        self.cfg.worker_abort(self)
        sys.exit(1)

    # -- what HttpConnection asks of its server -----------------------------------
    @property
    def limits(self) -> Any:
        return self.front.limits

    def meta(self) -> dict[str, Any]:
        return self.front.meta()

    async def handle(self, request: Any) -> Any:
        return await self.front.handle(request)

    def connection_opened(self, conn: HttpConnection) -> bool:
        """Count a new connection; False when the global cap is reached."""
        if self.front.board.load(CONNECTIONS) >= self.front.spec.max_connections:
            return False
        self.front.board.add(CONNECTIONS, 1)
        self.connections.add(conn)
        return True

    def connection_closed(self, conn: HttpConnection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.front.board.add(CONNECTIONS, -1)

    # -- the loop -----------------------------------------------------------------
    def run(self) -> None:
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            if self.front.pool is not None:
                self.front.pool.shutdown(wait=False, cancel_futures=True)
            self.loop.close()

    async def _serve(self) -> None:
        self.front = self.wsgi
        self.front.start()
        servers = [await self.loop.create_server(lambda: HttpConnection(self), sock=s.sock,
                                                 ssl=self.front.tls, backlog=2048)
                   for s in self.sockets]
        while self.alive:
            self.notify()
            if self.ppid != os.getppid():
                self.log.info("parent changed, shutting down: %s", self)
                break
            self.front.upstream.close_idle()
            await asyncio.sleep(1.0)
        for server in servers:
            server.close()
        await self._drain()

    async def _drain(self) -> None:
        """Close idle connections now; give requests in flight ``graceful_timeout``."""
        deadline = self.loop.time() + self.cfg.graceful_timeout
        while self.connections and not self.quick and self.loop.time() < deadline:
            for conn in list(self.connections):
                if conn.idle:
                    conn.close()
            self.notify()
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()
        self.front.upstream.close_idle(0)
        await asyncio.sleep(0)
