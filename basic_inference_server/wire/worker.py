"""The gunicorn worker class of the front and the endpoint servers: one uvloop event
loop per process.

gunicorn keeps what it is good at (pre-fork, respawn, signals, the heartbeat, graceful
timeouts); each worker runs an event loop whose connections are
:class:`.connection.HttpConnection`. Thousands of idle or slow clients then cost
sockets, not threads, and waiting on an endpoint costs a future. Subclasses (the
front's ``FrontWorker``, the servers' ``EndpointWorker``) say what a request gets.

On SIGTERM the worker stops accepting,
closes idle keep-alive connections at once, lets requests in flight finish (their
answers say ``Connection: close``) and exits, within ``STOP_TIMEOUT`` at most.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
from typing import Any

import uvloop
from gunicorn.workers.base import Worker
from prometheus_client import multiprocess

from ..procutil import batch_scheduling
from .connection import Answer, BodyBudget, HttpConnection, Limits, Request


class LoopWorker(Worker):
    """A gunicorn worker class serving :class:`.connection.HttpConnection` on uvloop.

    Subclasses say what a request gets (:meth:`handle`), the limits, and how
    connections are counted; this class runs the loop, the heartbeat and the stop.
    """

    loop: asyncio.AbstractEventLoop
    limits: Limits
    bodies: BodyBudget  # what the bodies being received on all its connections hold

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[HttpConnection] = set()
        self.quick = False

    def init_process(self) -> None:
        """Run this worker on a uvloop event loop (under SCHED_BATCH if its spec says)."""
        if self.sched_batch():
            batch_scheduling()
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        super().init_process()

    def init_signals(self) -> None:
        """SIGTERM stops gracefully, once the loop sees it."""
        # Plain handlers (not the loop's): hooks may wrap them with signal.getsignal.
        # The loop wakes every second at most, and that is when a stop is seen.
        super().init_signals()
        signal.signal(signal.SIGTERM, self._graceful)

    def handle_quit(self, sig: int, frame: Any) -> None:
        """SIGQUIT or SIGINT: stop quickly."""
        self.quick = True
        self._graceful(sig, frame)

    def handle_exit(self, sig: int, frame: Any) -> None:
        """gunicorn's exit handler: stop gracefully."""
        self._graceful(sig, frame)

    def _graceful(self, _sig: int, _frame: Any) -> None:
        self.alive = False
        # Wake the loop's once-a-second wait now: a stop starts at once. A second
        # SIGTERM (gunicorn's master relays the manager's) may come after the loop closed.
        waker = getattr(self, "waker", None)
        if waker is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(waker.set)

    # -- what HttpConnection asks of its server -----------------------------------
    def sched_batch(self) -> bool:
        """Whether this worker's threads run under SCHED_BATCH (its spec says)."""
        return False

    def meta(self) -> dict[str, Any]:
        """The metadata every answer carries."""
        raise NotImplementedError

    async def handle(self, request: Request) -> Answer:
        """The answer to ``request``."""
        raise NotImplementedError

    def tls(self) -> ssl.SSLContext | None:
        """The TLS context to serve with (None: plain HTTP)."""
        return None

    def connection_opened(self, conn: HttpConnection) -> bool:
        """Count a new connection; False when the cap is reached."""
        self.connections.add(conn)
        return True

    def connection_closed(self, conn: HttpConnection) -> None:
        """Forget a closed connection."""
        self.connections.discard(conn)

    def tick(self) -> None:
        """Once a second on the loop."""

    # -- the loop -----------------------------------------------------------------
    def run(self) -> None:
        """Serve until stopped, then close the loop."""
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            self.stopped()
            self._cancel_tasks()
            self.loop.close()

    def _cancel_tasks(self) -> None:
        """Cancel the tasks still pending (periodic reports) and let them end, as
        ``asyncio.run`` does: a pending task destroyed with its loop is logged as an error."""
        tasks = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))

    def started(self) -> None:
        """On the loop, before the first connection."""

    def stopped(self) -> None:
        """After the loop's last request."""

    async def _serve(self) -> None:
        self.waker = asyncio.Event()
        self.started()
        self.bodies = BodyBudget(self.limits.body_budget)
        # gunicorn's listeners wrap a socket; a hook may add plain sockets too.
        servers = [await self.loop.create_server(lambda: HttpConnection(self),
                                                 sock=getattr(s, "sock", s), ssl=self.tls(),
                                                 backlog=2048)
                   for s in self.sockets]
        while self.alive:
            self.notify()
            if self.ppid != os.getppid():
                self.log.info("parent changed, shutting down: %s", self)
                break
            self.tick()
            try:
                await asyncio.wait_for(self.waker.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
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
        # A transport closes on a later turn of the loop: let every socket really close
        # before the loop stops, or one would stay open (and a client wait on it) for as
        # long as the process takes to exit.
        closing = self.loop.time() + 1.0
        while self.connections and self.loop.time() < closing:
            await asyncio.sleep(0.01)


def mark_dead(pid: int) -> None:
    """gunicorn ``child_exit``: drop a dead process's live gauges (multiprocess metrics)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)
