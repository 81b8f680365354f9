"""Weighted fair queueing in the front (``FAIR_QUEUEING``): who runs next on a busy endpoint.

A local endpoint runs at most ``cap = per_worker x workers`` requests at once, counted
over every front process. A request past that waits in its front process,
ordered by its class's rank first (``PRIORITY_CLASSES``: strict priority), then by a
start tag (start-time fair queueing, Goyal, Vin and Cheng 1996, a fair queue without
per-flow timers): ``tag = max(V, F[tenant])`` and ``F[tenant] = tag + 1 / weight``,
where ``V`` is the tag of the request started last in the class. Busy tenants of a
class are served in proportion to their weights, whatever their concurrency; an idle
tenant earns no credit (its tag starts at ``V``).

One order over all front processes: what they share lives in memory made in the
gunicorn master before it forks (as :class:`.loadboard.LoadBoard`, whose rows and
columns it uses for the running and waiting counts): each tenant's finish tag, each
class's ``V``, and each process's head (its first waiting request's rank and tag). A
slot freed in one process goes to the process whose head comes first; when that is
another, a byte on that process's wake pipe tells it. A process holding waiting
requests also looks again every :data:`RECHECK_S`, so a race lost between two
processes costs a slot at most that long.

Written without a lock on the request path: a tag's read and write are two steps, so two
processes may give one tenant's simultaneous requests the same tag (one request's worth
of share, rare). Names and tenants take their shared slots under a lock, once each per
process.

How many per worker adapts to the endpoint's speed (``FAIR_BACKLOG_MS``, ``b``). A
worker handed one request at a time idles while the answer goes back to the front and
the next request comes out: on a sub-millisecond endpoint that hand-off costs more than
the request. So each front process keeps, per endpoint, a moving average ``s`` of a
request's own service time, from one in :data:`TIME_EVERY` of the non-streamed answers
it gets: ``latency x workers / max(running, workers)``, ``running`` being the requests
running on the endpoint when the answer came, itself included (its latency over the
requests its worker had, at least its own). Each worker then runs
``per_worker = FAIR_SLOTS + floor(b / s)`` requests at once
(:data:`MAX_SLOTS` at most, or ``FAIR_SLOTS`` if more): a request handed to a worker
finds at most about ``b`` of work queued before it there. A fast endpoint's workers keep
their pipelines full (the next requests are there when one ends); a 20 ms endpoint keeps
``FAIR_SLOTS`` (one request per worker for a plain endpoint), so an interactive request
never finds a flood's request queued before it in a worker. Until a first answer, and
with ``FAIR_BACKLOG_MS`` 0, ``per_worker`` is ``FAIR_SLOTS``. The cap is computed when
the estimate changes (:meth:`FairQueue.answered`) or the route does
(:meth:`FairQueue.take_now`), not for every request.

With the queue off (the default), :class:`NoFairQueue` forwards at once, as before.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import time
from dataclasses import dataclass, field

from prometheus_client import Histogram

from ..contracts import Route
from ..deadlines import MISSES
from ..errors import DeadlineExceeded
from ..names import is_name
from ..tenants.metering import TENANT_QUEUE_SECONDS, TENANT_QUEUED
from ..tenants.priorities import MAX_CLASSES, Priorities, Standing
from ..wire.message import Request
from .fair_shared import NO_HEAD, TENANT_SLOTS, SharedTags, ShareWindow
from .loadboard import LoadBoard
from .upstream_conn import UpstreamResponse

# Load board columns per endpoint: requests running on its workers, and waiting here.
RUNNING = "^"
WAITING = "?"
# A process with waiting requests looks at the shared heads this often besides when woken.
RECHECK_S = 0.01
# The most requests a worker is handed at once, however fast its endpoint
# (FAIR_BACKLOG_MS): at 64, a worker's pipeline stays full unless the hand-off between
# two requests (the answer back to the front, the next request out) lasts 64 of them;
# and an endpoint that turns slow at once has at most this many requests per worker
# queued in the order they came (not the fair one) until its first slow answer sizes
# the cap down again.
MAX_SLOTS = 64
# Weight of a new answer's service time in a lane's moving average: a few answers follow
# a change of the endpoint's speed, one odd answer moves it little.
SERVICE_ALPHA = 0.2
# One request in this many is timed for that average (a process's own count): timing
# one costs 0.8 us, every one was a third of the fair queue's bookkeeping on a noop,
# and a fast endpoint, the one that needs the estimate, gives many answers (a noop at
# 10,000 a second: 600 samples a second; a 20 ms endpoint on 2 workers: 6).
TIME_EVERY = 16
# The tenant of a request without a key or X-Customer-ID.
ANONYMOUS = "anonymous"
QUEUE_SECONDS = Histogram(
    "bis_queue_seconds", "Time requests waited in the front's fair queue (FAIR_QUEUEING), "
    "by endpoint and priority class (only requests that waited)", ["endpoint", "class"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


@dataclass
class Lane:
    """One endpoint's columns of the load board, how many requests it runs at once, and
    the service time that number adapts to (``FAIR_BACKLOG_MS``)."""

    running: int
    waiting: int
    cap: int = 1
    # Seconds of the endpoint's own time a request takes, as this process measured its
    # answers (a moving average); 0: no answer yet.
    service: float = 0.0
    # The route ``cap`` was sized for: a new one (the route file read again: workers,
    # FAIR_SLOTS or FAIR_BACKLOG_MS may have changed) sizes it again.
    sized_for: Route | None = None

    def size(self, route: Route) -> None:
        """Set :attr:`cap` from ``route`` and the service time (see the module's docstring)."""
        per_worker = route.slots
        if route.backlog_ms and self.service:
            # Never below FAIR_SLOTS, even where FAIR_SLOTS is past MAX_SLOTS.
            per_worker = min(per_worker + int(route.backlog_ms / 1000 / self.service),
                             max(per_worker, MAX_SLOTS))
        self.cap = (len(route.workers) or 1) * per_worker
        self.sized_for = route

    def timed(self, route: Route, latency: float, running: int) -> None:
        """An answer of ``route`` came ``latency`` seconds after it was sent with
        ``running`` requests on the endpoint (itself included): a service time sample."""
        workers = len(route.workers) or 1
        # Spread over the workers, a request found running / workers requests before it
        # and its own; fewer running than workers: a worker of its own.
        sample = latency * workers / (running if running > workers else workers)
        service = self.service
        self.service = sample if not service else service + SERVICE_ALPHA * (sample - service)
        self.size(route)


@dataclass(order=True)
class Waiter:
    """A request waiting for a slot, in serving order."""

    rank: int
    tag: float
    seq: int
    standing: Standing = field(compare=False)
    turn: asyncio.Future[None] = field(compare=False)
    since: float = field(compare=False)


class FairQueue:
    """One front process's side of the fair queue (see the module's docstring)."""

    def __init__(self, board: LoadBoard, shared: SharedTags) -> None:
        self.board = board
        self.shared = shared
        self._queues: dict[str, list[Waiter]] = {}
        self._seq = itertools.count()
        self._lanes: dict[str, Lane] = {}
        self._recheck: asyncio.TimerHandle | None = None
        self._sent = 0  # requests sent since the last one timed (clock())
        self._window = ShareWindow()

    def start(self) -> None:
        """In each front process, on its loop: listen on its wake pipe."""
        self.shared.clear_row(self.board.row)
        loop = asyncio.get_running_loop()
        loop.add_reader(self.shared.wakers[self.board.row][0], self._woken)

    def take_now(self, route: Route, standing: Standing) -> bool:
        """Take a slot of ``route`` when one is free and nobody waits for it; False:
        :meth:`take` waits for one."""
        name = route.name
        lane = self._lanes.get(name) or self._lane(name)
        if lane.sized_for is not route:
            lane.size(route)
        board = self.board
        if not board.take_if_free(lane.running, lane.waiting, lane.cap):
            return False
        self.shared.started[board.row * TENANT_SLOTS
                            + self.shared.tenant_slot(name, standing.tenant)] += 1
        return True

    async def take(self, route: Route, standing: Standing, deadline: float | None) -> None:
        """Wait for a slot of ``route`` in the fair queue's order (after
        :meth:`take_now`); 504 ``deadline_exceeded`` when ``deadline`` passes first."""
        name = route.name
        waiter = self._enqueue(name, standing)
        self.pump(name)
        try:
            if deadline is None:
                await waiter.turn
            else:
                await asyncio.wait_for(asyncio.shield(waiter.turn), deadline - time.perf_counter())
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            if waiter.turn.done() and not waiter.turn.cancelled():
                self.give_back(name)  # its turn came as it left: pass the slot on
            else:
                waiter.turn.cancel()
                self._left(name)
            if isinstance(exc, asyncio.CancelledError):
                raise
            MISSES.labels(name, "queue").inc()
            raise DeadlineExceeded(f"the request's deadline passed while it waited for "
                                   f"endpoint {name}", SIGNATURE=name) from None

    def clock(self, route: Route) -> float:
        """When a request of ``route`` is sent: ``time.perf_counter()`` for one in
        :data:`TIME_EVERY` (to give :meth:`answered`) while ``FAIR_BACKLOG_MS`` is on,
        else 0 (not timed)."""
        if route.backlog_ms:
            self._sent += 1
            if self._sent >= TIME_EVERY:
                self._sent = 0
                return time.perf_counter()
        return 0.0

    def answered(self, route: Route, latency: float) -> None:
        """A non-streamed answer of ``route`` came ``latency`` seconds after it was sent,
        with the requests running on the endpoint now (itself included): the lane's
        service time follows, and its cap (before :meth:`give_back`, which hands slots
        out)."""
        lane = self._lanes[route.name]
        lane.timed(route, latency, self.board.load_at(lane.running))

    def give_back(self, name: str) -> None:
        """A request of ``name`` ended: its slot goes to the next waiting request."""
        lane = self._lanes[name]
        if self.board.release(lane.running, lane.waiting):
            self.pump(name)

    def _lane(self, name: str) -> Lane:
        lane = self._lanes[name] = Lane(self.board.column(RUNNING + name),
                                        self.board.column(WAITING + name))
        return lane

    def _enqueue(self, name: str, standing: Standing) -> Waiter:
        shared = self.shared
        slot = shared.tenant_slot(name, standing.tenant)
        lane = self._lanes[name]
        vslot = lane.waiting * MAX_CLASSES + standing.rank
        tag = max(shared.vtime[vslot], shared.finish[slot])
        shared.finish[slot] = tag + 1.0 / standing.weight
        waiter = Waiter(standing.rank, tag, next(self._seq), standing,
                        asyncio.get_running_loop().create_future(), time.perf_counter())
        heapq.heappush(self._queues.setdefault(name, []), waiter)
        self.board.add_at(lane.waiting, 1)
        self._publish(name)
        self._arm()
        return waiter

    def _left(self, name: str) -> None:
        """A waiting request left (its caller went away, its deadline passed)."""
        self.board.add_at(self._lanes[name].waiting, -1)
        self._publish(name)
        self.pump(name)

    def _head(self, name: str) -> Waiter | None:
        queue = self._queues.get(name)
        while queue and queue[0].turn.done():
            heapq.heappop(queue)
        return queue[0] if queue else None

    def _publish(self, name: str) -> None:
        """Show the other processes this process's first waiting request of ``name``."""
        i = self.board.row * self.board.columns + self._lanes[name].waiting
        head = self._head(name)
        if head is None:
            self.shared.head_rank[i] = NO_HEAD
        else:
            self.shared.head_tag[i] = head.tag
            self.shared.head_rank[i] = head.rank

    def _first_row(self, name: str) -> int:
        """The process row whose head of ``name`` comes first (-1: none waits)."""
        shared, board = self.shared, self.board
        col = self._lanes[name].waiting
        best, best_key = -1, (MAX_CLASSES, 0.0)
        for row in range(board.rows):
            i = row * board.columns + col
            rank = shared.head_rank[i]
            if rank != NO_HEAD and (rank, shared.head_tag[i]) < best_key:
                best, best_key = row, (rank, shared.head_tag[i])
        return best

    def pump(self, name: str) -> None:
        """Start waiting requests of ``name`` while slots are free and this process's
        head comes first; wake the process whose head does otherwise."""
        board, shared = self.board, self.shared
        lane = self._lanes[name]
        while board.load_at(lane.running) < lane.cap:
            row = self._first_row(name)
            if row < 0:
                return
            if row != board.row:
                shared.wake(row)
                return
            head = self._head(name)
            if head is None:  # this row's published head left: show that, look again
                self._publish(name)
                continue
            heapq.heappop(self._queues[name])
            board.add_at(lane.running, 1)
            board.add_at(lane.waiting, -1)
            vslot = lane.waiting * MAX_CLASSES + head.rank
            if head.tag > shared.vtime[vslot]:
                shared.vtime[vslot] = head.tag
            slot = shared.tenant_slot(name, head.standing.tenant)
            shared.started[board.row * TENANT_SLOTS + slot] += 1
            waited = time.perf_counter() - head.since
            QUEUE_SECONDS.labels(name, head.standing.name).observe(waited)
            TENANT_QUEUE_SECONDS.labels(head.standing.tenant, name,
                                        head.standing.name).inc(waited)
            TENANT_QUEUED.labels(head.standing.tenant, name, head.standing.name).inc()
            head.turn.set_result(None)
            self._publish(name)

    def _woken(self) -> None:
        try:
            os.read(self.shared.wakers[self.board.row][0], 4096)
        except BlockingIOError:
            pass
        self._pump_all()

    def _rechecked(self) -> None:
        self._recheck = None
        self._pump_all()

    def _pump_all(self) -> None:
        for name, queue in self._queues.items():
            if queue:
                self.pump(name)
        self._arm()

    def _arm(self) -> None:
        """Look again in :data:`RECHECK_S` while requests wait here (one timer at most:
        a wake between two looks does not add one)."""
        if self._recheck is None and any(self._queues.values()):
            self._recheck = asyncio.get_running_loop().call_later(RECHECK_S, self._rechecked)

    def shares(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per endpoint and tenant: requests started over every process in the last
        :data:`SHARE_WINDOW_S` or so, and their share of the endpoint's."""
        return self._window.shares(self.shared.served())


def standing_of(priorities: Priorities, req: Request) -> Standing:
    """A request's class, tenant and weight: its key's, else its X-Customer-ID's (the
    caller's word: keys off), under its X-Priority."""
    asked = customer = None
    for header, value in req.headers:
        if header == b"x-priority":
            asked = value
        elif header == b"x-customer-id":
            customer = value.decode("latin-1").strip()
    key = req.key
    if key is not None:
        return priorities.standing(key.tenant, key.priority, key.weight, asked)
    tenant = customer if customer and is_name(customer) else ANONYMOUS
    return priorities.standing(tenant, asked=asked)


async def queued(fair: FairQueue, route: Route, standing: Standing, req: Request) -> None:
    """:meth:`FairQueue.take` for a request :meth:`FairQueue.take_now` found no slot
    for (its wait, in its trace)."""
    waited = time.perf_counter()
    await fair.take(route, standing, req.deadline)
    if req.trace is not None:
        req.trace.record("queue", waited, time.perf_counter())


def ended(fair: FairQueue, route: Route, resp: UpstreamResponse | None, sent: float) -> None:
    """A request holding a slot of ``route`` got ``resp`` (None: none), ``sent`` as
    :meth:`FairQueue.clock` said: the slot passes on now, or when the stream ends. A
    plain answer sent timed is timed (a stream's time is its length, not the endpoint's
    speed; a failure, a crashed worker's fast 502, says nothing of it either)."""
    name = route.name
    if resp is not None and resp.stream is not None:
        resp.stream.hold(lambda _end: fair.give_back(name))
        return
    if sent and resp is not None and resp.status < 500:
        fair.answered(route, time.perf_counter() - sent)
    fair.give_back(name)


class NoFairQueue:
    """``FAIR_QUEUEING`` off: requests go at once (the endpoint's workers queue them)."""

    def start(self) -> None:
        """Nothing to listen to."""

    def take_now(self, route: Route, standing: Standing) -> bool:
        """A slot at once."""
        return True

    async def take(self, route: Route, standing: Standing, deadline: float | None) -> None:
        """Never waited for: :meth:`take_now` gives a slot at once."""

    def give_back(self, name: str) -> None:
        """Nothing was taken."""

    def shares(self) -> dict[str, dict[str, dict[str, float]]]:
        """Nothing is queued here."""
        return {}
