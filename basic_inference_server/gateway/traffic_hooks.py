"""The front's share of traffic management: circuit breakers and per-target statistics.

Each front process keeps a breaker and counts per target (route name: ``echo``,
``clf@v2``). A request passes :meth:`TrafficHooks.guard` on its way to the target:
an open breaker refuses it at once (503 ``circuit_open`` with ``Retry-After``, nothing
sent upstream), and its outcome is judged by the one failure definition
(:mod:`..traffic.outcome`). The router asks :meth:`TrafficHooks.allowed` so that an
unpinned request avoids a version whose breaker is open.

Every :data:`REPORT_EVERY` seconds the process sends the manager, over the control
socket, its counts since the last report and its breakers' states (command
``traffic_report``): rollouts are judged on them, ``/list_servers`` and ``/metrics``
show them.

A streamed answer is judged when it ends (:meth:`TrafficHooks.later`): a stream that
ends in an ``error`` event, is cut by its endpoint or passes a stream timeout is a
failure; one its caller left counts neither way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..control_api import TRAFFIC_REPORT
from ..errors import CircuitOpen, ServingError
from ..traffic.breaker import Breakers
from ..traffic.outcome import Origin, origin_of
from ..traffic.stats import Recorder
from .manager_call import call_manager
from .upstream_conn import CLIENT_GONE, StreamEnd

log = logging.getLogger(__name__)

REPORT_EVERY = 0.25
# With nothing new to say, a process still reports this often: the manager forgets the
# breakers of a process it has not heard from in a while (a front that was replaced).
HEARTBEAT_EVERY = 2.0
REPORT_TIMEOUT = 2.0


@dataclass
class Outcome:
    """What :meth:`TrafficHooks.guard` yields: set ``status`` once the target answered."""

    status: int | None = None
    started: float = 0.0
    deferred: bool = False  # a stream: judged when it ends (TrafficHooks.later)


class TrafficHooks:
    """Breakers, statistics and the reports to the manager of one front process."""

    def __init__(self, control: str, clock: Any = time.monotonic) -> None:
        self.control = control
        self.clock = clock
        self.breakers = Breakers()
        self.recorder = Recorder()
        self._task: asyncio.Task[None] | None = None
        self._last_states: dict[str, Any] = {}
        self._last_sent = 0.0

    def allowed(self, target: str) -> bool:
        """Whether ``target``'s breaker would let a request through now (the router's test)."""
        return not self.breakers.blocked(target, self.clock())

    @contextmanager
    def guard(self, target: str, cfg: dict[str, Any] | None) -> Iterator[Outcome]:
        """Admit a request to ``target`` (its breaker's settings ``cfg``, None: none) or
        raise :class:`CircuitOpen`; then record its outcome: the status set on the
        yielded :class:`Outcome`, else the error raised."""
        if not self.breakers.allow(target, cfg, self.clock()):
            self.recorder.record(target, 503, Origin.FRONT, 0.0)
            raise self._refusal(target)
        outcome = Outcome(started=self.clock())
        started = outcome.started
        failed: bool | None = None
        try:
            yield outcome
        except ServingError as err:
            origin = origin_of(err)
            counted = self.recorder.record(target, err.status, origin, self.clock() - started)
            failed = None if origin is Origin.FRONT else counted
            raise
        finally:
            if not outcome.deferred:
                if outcome.status is not None:
                    failed = self.recorder.record(target, outcome.status, Origin.ENDPOINT,
                                                  self.clock() - started)
                # None (cancelled, or refused on the front's side): only the probe slot
                # returns.
                self.breakers.record(target, cfg, failed, self.clock())

    def later(self, target: str, cfg: dict[str, Any] | None,
              outcome: Outcome) -> Callable[[StreamEnd], None]:
        """Judge a stream when it ends, not when its head came (what :meth:`guard` does
        for a whole answer): the release to hold on the stream."""
        outcome.deferred = True

        def judge(end: StreamEnd) -> None:
            failed: bool | None = None
            if end.reason != CLIENT_GONE:
                origin = origin_of(end.error) if end.error is not None else Origin.ENDPOINT
                failed = self.recorder.record(target, end.status, origin,
                                              self.clock() - outcome.started)
            self.breakers.record(target, cfg, failed, self.clock())

        return judge

    def _refusal(self, target: str) -> CircuitOpen:
        now = self.clock()
        wait = self.breakers.retry_after(target, now)
        return CircuitOpen(f"the circuit breaker of {target} is open "
                           f"({self.breakers.reason(target)}); retry in {max(1, round(wait))} s",
                           retry_after=max(wait, 1.0), SIGNATURE=target)

    # -- reports to the manager ------------------------------------------------------
    def start(self) -> None:
        """On the process's event loop: report to the manager from now on."""
        self._task = asyncio.get_running_loop().create_task(self._reports())

    async def _reports(self) -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY)
            await self.report_once()

    async def report_once(self) -> None:
        """Send the counts since the last report and the breakers' states (when there is
        news, or a heartbeat is due); counts that could not be sent go in the next one."""
        now = self.clock()
        view = self.breakers.describe(now)
        states = {t: v["state"] for t, v in view.items()}
        taken = self.recorder.take()
        if not taken and states == self._last_states and now - self._last_sent < HEARTBEAT_EVERY:
            return
        payload = TRAFFIC_REPORT.request({
            "pid": os.getpid(), "stats": {t: c.to_json() for t, c in taken.items()},
            "breakers": view})
        try:
            reply = await call_manager(self.control, payload, REPORT_TIMEOUT)
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            log.debug("traffic report not delivered (%s); kept for the next one", exc)
            self.recorder.restore(taken)
            return
        if reply.get("status") != 200:
            log.warning("the manager refused a traffic report: %s", reply.get("body"))
        self._last_states, self._last_sent = states, now
