"""Scale to zero, the front's part: telling the manager which endpoints are idle.

An endpoint with ``MIN_WORKERS: 0`` has an ``idle_timeout`` in its route. One front
process (the one on row 0 of the load board: each row is one process, and a new process
takes the row of the one it replaces) looks at each such READY endpoint every
:data:`WATCH_EVERY` seconds: its requests in flight (``@<endpoint>``, counted by every
front process) and the requests started (``+<endpoint>``, a count that only grows, so
a request shorter than a look is seen too). When neither moved for ``IDLE_TIMEOUT`` and
no job of the endpoint is waiting or running (its workers take jobs from the queue
themselves, without the front), the manager is told (``report_idle``) and scales it to
zero. A request for it then wakes it (:meth:`.dispatch.Dispatcher.resolve`).

One request can slip between: routed while the endpoint was still READY, it reaches the
endpoint's shared socket after the last worker stopped. The socket stays open while the
endpoint is IDLE (the next generation serves on it), so the request waits there; the
watch sees an IDLE endpoint with a request in flight and wakes it, and the new
workers take it. A job can slip between too (queued as the endpoint stops, its submit
saw it READY): every :data:`JOBS_EVERY` seconds the watch wakes an IDLE endpoint that
has jobs waiting.

The load board is what the front already keeps per request, so watching costs one
shared-memory add per request of these endpoints, and nothing for the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..contracts import EndpointState
from ..control_api import REPORT_IDLE
from .jobs import JobsFront
from .loadboard import LoadBoard
from .manager_call import call_manager
from .routes import RouteTable

log = logging.getLogger(__name__)

WATCH_EVERY = 0.1
# A report the manager did not act on (it was busy, the endpoint was reloading) is sent
# again this often while the endpoint stays idle.
REPORT_AGAIN = 1.0
# How often the queue of an IDLE endpoint is looked at (a query to the queue's backend).
JOBS_EVERY = 1.0
# The load board's column counting the requests started to an endpoint: "+<endpoint>".
STARTED = "+"
READY = EndpointState.READY
IDLE = EndpointState.IDLE


@dataclass
class _Seen:
    started: int  # the count of requests started, when it last moved
    since: float  # the last time anything moved
    next_report: float = 0.0


class IdleWatch:
    """Reports the endpoints with ``MIN_WORKERS: 0`` idle for their ``IDLE_TIMEOUT``."""

    def __init__(self, routes: RouteTable, board: LoadBoard, jobs: JobsFront, control: str,
                 off_loop: Callable[..., Awaitable[Any]], wake: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.routes, self.board, self.jobs = routes, board, jobs
        self.control, self.off_loop, self.wake, self.clock = control, off_loop, wake, clock
        self._seen: dict[str, _Seen] = {}
        self._jobs_checked: dict[str, float] = {}  # IDLE endpoint -> when its queue was
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """On the process's event loop: watch, if this process holds row 0."""
        if self.board.row == 0:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_EVERY)
            try:
                await self.check_once()
            except Exception:  # noqa: BLE001 - the watch goes on; the next look may do
                log.exception("idle watch failed")

    async def check_once(self) -> None:
        """One look at every watched endpoint; reports those idle long enough."""
        now = self.clock()
        routes = {n: r for n, r in self.routes.table().endpoints.items()
                  if r.idle_timeout is not None}
        for name, route in routes.items():
            if route.state is IDLE:
                await self._wake_if_waited_for(name, now)
        watched = {n: r for n, r in routes.items() if r.state is READY}
        for name in [n for n in self._seen if n not in watched]:
            del self._seen[name]  # idle time counts from READY again
        for name, route in watched.items():
            started = self.board.load(STARTED + name)
            seen = self._seen.get(name)
            if seen is None or started != seen.started or self.board.load("@" + name):
                self._seen[name] = _Seen(started, now)
                continue
            assert route.idle_timeout is not None
            if now - seen.since < route.idle_timeout or now < seen.next_report:
                continue
            seen.next_report = now + REPORT_AGAIN
            if await self.off_loop(self._jobs_pending, name):
                seen.since = now
                continue
            await self._report(name, now - seen.since)

    async def _wake_if_waited_for(self, name: str, now: float) -> None:
        """An IDLE endpoint with a request in flight (it slipped in as the endpoint
        stopped: it waits on the socket) or, looked at every JOBS_EVERY s, jobs waiting."""
        if self.board.load("@" + name):
            self.wake(name)
        elif now - self._jobs_checked.get(name, -JOBS_EVERY) >= JOBS_EVERY:
            self._jobs_checked[name] = now
            if await self.off_loop(self._jobs_pending, name):
                self.wake(name)

    def _jobs_pending(self, name: str) -> bool:
        """Whether a job of ``name`` waits or runs (unknown counts as yes: an endpoint is
        never stopped under a job it may be running)."""
        if self.jobs.spec is None:
            return False
        info = self.jobs.status([name])
        return "error" in info or bool(info.get(name, {}).get("depth"))

    async def _report(self, name: str, idle_s: float) -> None:
        payload = REPORT_IDLE.request({"SIGNATURE": name, "idle_s": round(idle_s, 1)})
        try:
            reply = await call_manager(self.control, payload)
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            log.debug("idle report for %s not delivered (%s)", name, exc)
            return
        if reply.get("status") != 200:
            log.warning("the manager refused the idle report of %s: %s", name, reply.get("body"))
