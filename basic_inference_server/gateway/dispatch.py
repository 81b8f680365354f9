"""Sending one request to one route: a ``/run``'s, a pipeline step's, a shadow's copy.

:meth:`Dispatcher.dispatch` resolves the route (waiting for an endpoint on its way up
unless ``NO_STARTUP_WAIT``; waking one scaled to zero and waiting for it, up to its
``COLD_START_TIMEOUT``, whatever ``NO_STARTUP_WAIT`` says), passes it through its
breaker, holds a place of its ``MAX_IN_FLIGHT`` (past it: 503 ``overloaded`` at once, so
one stuck endpoint can never hold the front's capacity), and forwards it: to a local server, a remote gateway
(``URLS``) or, for a pipeline, through its steps. With ``FAIR_QUEUEING`` a request to a
busy local server first waits its turn in the fair queue (:mod:`.fair_queue`). A
streamed answer holds its place (and its turn), and is judged by the breaker, until it
ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..contracts import WAITABLE_STATES, EndpointState, Route
from ..control_api import WAKE
from ..deadlines import MISSES, header_line, left_ms
from ..errors import DeadlineExceeded, NotFound, Overloaded, Unavailable, UpstreamTimeout
from ..names import split_target
from ..tenants.priorities import Priorities
from ..tracing import Trace
from ..traffic.remote import remote_body
from ..wire.deadline import SLACK
from ..wire.message import Request
from .fair_queue import FairQueue, NoFairQueue, ended, queued, standing_of
from .idle_watch import STARTED
from .loadboard import LoadBoard
from .manager_call import call_manager
from .routes import RouteTable
from .stream_relay import in_flight_until_end
from .traffic_hooks import TrafficHooks
from .upstream import head_lines
from .upstream_conn import UpstreamResponse

# Bodies this large are rewritten for a remote off the event loop.
SCAN_OFF_LOOP = 1024 * 1024
# How often a request waiting for its endpoint to start reads the route file again.
WAIT_POLL_S = 0.02
OffLoop = Callable[..., Awaitable[Any]]
# (a module constant: read on every request, cheaper than the enum's attribute)
READY = EndpointState.READY
IDLE = EndpointState.IDLE
# An endpoint woken from zero is waited for while it is in these states.
WAKING = frozenset({EndpointState.IDLE, EndpointState.STARTING})
# A wake the manager did not get (busy, restarting) is asked again this often.
WAKE_AGAIN_S = 0.5
# How often the one watcher of a waking endpoint (per front process) reads the route
# file: a request waits at most this long past the endpoint's READY.
COLD_POLL_S = 0.005


class Upstreams(Protocol):
    """Where requests go: the endpoint servers and remote gateways (:class:`.upstream.Upstream`)."""

    async def forward(self, route: dict[str, Any], name: str, head: bytes,
                      body: bytes, timeout: float | None = None) -> UpstreamResponse:
        """Send a request to a local endpoint's least busy worker (``timeout``: how long
        its answer is awaited; None: the route's TIMEOUT)."""

    async def forward_remote(self, route: dict[str, Any], name: str, head: bytes,
                             body: bytes, timeout: float | None = None) -> UpstreamResponse:
        """Send a request to a remote endpoint's least busy URL (``timeout`` as above)."""


class PipelineRoutes(Protocol):
    """How a pipeline route is answered (:class:`.pipelines.Pipelines`)."""

    async def run(self, route: Route, raw: bytes, req: Request) -> UpstreamResponse:
        """Run the pipeline ``route`` on a request."""


@dataclass
class Dispatcher:
    """Resolves, guards and forwards requests to routes of the route table."""

    routes: RouteTable
    board: LoadBoard
    upstream: Upstreams
    traffic: TrafficHooks
    off_loop: OffLoop
    control: str = ""  # the manager's control socket (waking endpoints scaled to zero)
    # FAIR_QUEUEING: who goes first on a busy endpoint (NoFairQueue: whoever comes).
    fair: FairQueue | NoFairQueue = field(default_factory=NoFairQueue)
    priorities: Priorities = field(
        default_factory=lambda: Priorities(["standard"], "standard"))
    pipelines: PipelineRoutes = field(init=False)  # set once the run flow that runs the steps exists
    _waking: dict[str, asyncio.Task[Route]] = field(default_factory=dict, init=False)

    def may_take(self, target: str) -> bool:
        """Whether a version may get unpinned requests now: READY (or scaled to zero: the
        request wakes it), its breaker not open."""
        route = self.routes.get(target)
        return route is not None and (route.state is READY or (
            route.state is IDLE and route.idle_timeout is not None)) \
            and self.traffic.allowed(target)

    async def dispatch(self, target: str, raw: bytes, req: Request) -> UpstreamResponse:
        """Send a request to the route ``target`` through its breaker, recording its
        outcome (breaker, rollout stats)."""
        route = await self.resolve(target)
        if not route.judged:
            # Nothing judges this target (no breaker, no rollout): no bookkeeping to pay.
            return await self._forward(route, raw, req)
        with self.traffic.guard(target, route.breaker) as outcome:
            resp = await self._forward(route, raw, req)
            outcome.status = resp.status
            if resp.stream is not None:  # judged by how the stream ends
                resp.stream.hold(self.traffic.later(target, route.breaker, outcome))
        return resp

    async def _forward(self, route: Route, raw: bytes, req: Request) -> UpstreamResponse:
        column = hold_place(self.board, route)
        resp = None
        try:
            if route.pipeline is not None:
                resp = await self.pipelines.run(route, raw, req)
            elif route.remote is not None or not isinstance(self.fair, FairQueue):
                resp = await self._send(route, raw, req)
            else:  # its turn in the fair queue: at once, unless others wait or slots are full
                fair = self.fair
                standing = standing_of(self.priorities, req)
                if not fair.take_now(route, standing):
                    await queued(fair, route, standing, req)
                sent = fair.clock(route)
                try:
                    resp = await self._send(route, raw, req)
                finally:
                    ended(fair, route, resp, sent)
            return resp
        finally:
            if resp is not None and resp.stream is not None:  # in flight until it ends
                resp.stream.hold(in_flight_until_end(self.board, column))
            else:
                self.board.add(column, -1)

    def _send(self, route: Route, raw: bytes, req: Request,
              extra: bytes = b"") -> Awaitable[UpstreamResponse]:
        """Forward to the route's server or remote URLs (before the request's deadline;
        ``extra``: header lines); a traced request in an ``upstream`` span."""
        if req.trace is not None and not extra:
            return traced(req.trace, route.name, lambda line: self._send(route, raw, req, line))
        if req.deadline is not None:
            return self._before_deadline(route, raw, req, extra)
        if route.remote is not None:
            return self._forward_remote(route, raw, req, None, extra)
        return self.upstream.forward(route.record, route.name, head_lines(req, None) + extra, raw)

    async def _before_deadline(self, route: Route, raw: bytes, req: Request,
                               extra: bytes = b"") -> UpstreamResponse:
        """A request with a deadline: not sent once it passed; sent with what is left of
        it (X-Request-Deadline), its answer awaited no longer than that. The endpoint's
        TIMEOUT caps it: when that comes first, the answer is its usual 504 timeout."""
        assert req.deadline is not None
        left = min(req.deadline - time.perf_counter(), route.timeout)
        ms = left_ms(left)
        if ms < 1:
            MISSES.labels(route.name, "gateway").inc()
            raise DeadlineExceeded("the request's deadline passed before it was sent",
                                   SIGNATURE=route.name)
        try:
            if route.remote is not None:
                return await self._forward_remote(route, raw, req, left, header_line(ms) + extra)
            return await self.upstream.forward(route.record, route.name, head_lines(req, None)
                                               + header_line(ms) + extra, raw, left)
        except UpstreamTimeout:
            # (The connection's timer may fire up to its SLACK before the time it was set for.)
            if time.perf_counter() < req.deadline - SLACK:
                raise  # its TIMEOUT came first
            MISSES.labels(route.name, "gateway").inc()
            raise DeadlineExceeded(f"the request's deadline passed while endpoint "
                                   f"{route.name} ran it", SIGNATURE=route.name) from None

    async def _forward_remote(self, route: Route, raw: bytes, req: Request,
                              timeout: float | None = None,
                              extra: bytes = b"") -> UpstreamResponse:
        """A remote endpoint (``URLS``): the body names the remote's SIGNATURE (by default
        this endpoint's name, without a version label), then goes over TCP. ``timeout``:
        how long its answer is awaited (None: its TIMEOUT), ``extra``: header lines."""
        remote = route.remote
        assert remote is not None
        signature = remote["signature"] or split_target(route.name)[0]
        if len(raw) > SCAN_OFF_LOOP:
            raw = await self.off_loop(remote_body, raw, signature)
        else:
            raw = remote_body(raw, signature)
        return await self.upstream.forward_remote(route.record, route.name,
                                                  head_lines(req, remote) + extra, raw, timeout)

    async def resolve(self, name: str) -> Route:
        """The route of a READY endpoint, or the error to answer with."""
        route = self.routes.get(name)
        if route is None or route.state is not READY:
            # The cached table may be 50 ms old: before an error, read the current one (an
            # endpoint /start_server has just started must not be unknown or STOPPED).
            route = self.routes.get(name, fresh=True)
        if route is None:
            raise NotFound(f"unknown SIGNATURE {name!r}", AVAIL_SERVERS=self.routes.names())
        if route.state is not READY:
            route = await self._coming_up(route)
        if route.state is READY:
            return route
        raise Unavailable(
            f"endpoint {name} is {route.state.value}"
            + (f": {route.last_error}" if route.last_error else ""),
            retry_after=route.retry_after, SIGNATURE=name, STATE=route.state.value)

    async def _coming_up(self, route: Route) -> Route:
        """A route not READY, as it is once the waiting the rules allow is over: an
        endpoint scaled to zero is woken and waited for; one on its way up is waited
        for unless ``NO_STARTUP_WAIT``."""
        if route.idle_timeout is not None and route.state in WAKING:
            return await self._cold_start(route)
        if route.state in WAITABLE_STATES and not self.routes.table().no_startup_wait:
            return await self._wait_ready(route)
        return route

    async def _cold_start(self, route: Route) -> Route:
        """An endpoint scaled to zero: hold the request until it is READY, has failed, or
        its ``COLD_START_TIMEOUT`` is up. One task per endpoint (in this process) wakes
        and watches it, however many requests wait."""
        task = self._waking.get(route.name)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._starting(route))
            self._waking[route.name] = task
        try:
            return await asyncio.wait_for(asyncio.shield(task), route.cold_start_timeout)
        except asyncio.TimeoutError:
            return self.routes.get(route.name, fresh=True) or route

    async def _starting(self, route: Route) -> Route:
        """Ask the manager to start ``route`` (again while it stays IDLE) and watch the
        route file until it leaves the waking states."""
        deadline = time.monotonic() + route.cold_start_timeout
        asked = -WAKE_AGAIN_S
        while time.monotonic() < deadline and route.state in WAKING:
            if route.state is IDLE and time.monotonic() - asked >= WAKE_AGAIN_S:
                asked = time.monotonic()
                await self._ask_wake(route.name)
            await asyncio.sleep(COLD_POLL_S)
            route = self.routes.get(route.name, fresh=True) or route
        return route

    def wake(self, name: str) -> None:
        """Ask the manager to start ``name`` (scaled to zero) without waiting for it."""
        asyncio.get_running_loop().create_task(self._ask_wake(name))

    async def _ask_wake(self, name: str) -> None:
        try:
            await call_manager(self.control, WAKE.request({"SIGNATURE": name}))
        except (OSError, asyncio.TimeoutError, ValueError):
            pass  # asked again while the route says IDLE

    async def _wait_ready(self, route: Route) -> Route:
        """Poll the route file (a stat) until the endpoint is ready, has failed (no use
        waiting for a model that did not load), or its TIMEOUT is up."""
        deadline = time.monotonic() + route.timeout
        while time.monotonic() < deadline and route.state in WAITABLE_STATES:
            await asyncio.sleep(WAIT_POLL_S)
            route = self.routes.get(route.name, fresh=True) or route
        return route


def hold_place(board: LoadBoard, route: Route) -> str:
    """Count a request in flight to ``route`` (its load board column, returned); 503
    ``overloaded`` past its ``MAX_IN_FLIGHT``."""
    name = route.name
    column = "@" + name
    limit = route.max_in_flight
    if limit and board.load(column) >= limit:
        raise Overloaded(f"endpoint {name} has {limit} requests in flight (MAX_IN_FLIGHT); "
                         "retry shortly", retry_after=1, SIGNATURE=name, MAX_IN_FLIGHT=limit)
    board.add(column, 1)  # also bis_in_flight (metrics.InFlight)
    if route.idle_timeout is not None:
        board.add(STARTED + name, 1)  # seen by the idle watch (scale to zero)
    return column


async def traced(trace: Trace, name: str,
                 send: Callable[[bytes], Awaitable[UpstreamResponse]]) -> UpstreamResponse:
    """A traced request's call to ``name``: an ``upstream`` span, named as the parent of
    the server's in the ``traceparent`` sent; it ends with the answer (a stream's end)."""
    span = trace.start(f"upstream {name}", client=True)
    resp = None
    try:
        resp = await send(trace.line(span))
        return resp
    finally:
        if resp is not None and resp.stream is not None:
            resp.stream.hold(lambda _end: trace.stop(span))
        else:
            trace.stop(span, {"http.response.status_code": resp.status if resp else 0})
