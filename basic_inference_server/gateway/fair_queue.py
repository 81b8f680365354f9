"""Weighted fair queueing in the front (``FAIR_QUEUEING``): who runs next on a busy endpoint.

A local endpoint runs at most ``slots x workers`` requests at once (``FAIR_SLOTS``,
counted over every front process). A request past that waits in its front process,
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

With the queue off (the default), :class:`NoFairQueue` forwards at once, as before.
"""

from __future__ import annotations

import asyncio
import ctypes
import heapq
import itertools
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import Histogram

from ..contracts import Route
from ..deadlines import MISSES
from ..errors import DeadlineExceeded
from ..names import is_name
from ..tenants.metering import TENANT_QUEUE_SECONDS, TENANT_QUEUED
from ..tenants.priorities import MAX_CLASSES, Priorities, Standing
from ..tenants.shared import slot_hash
from ..wire.message import Request
from .loadboard import LoadBoard
from .upstream_conn import UpstreamResponse

# Load board columns per endpoint: requests running on its workers, and waiting here.
RUNNING = "^"
WAITING = "?"
# A process with waiting requests looks at the shared heads this often besides when woken.
RECHECK_S = 0.01
# Tenants (per endpoint) whose tags are shared; past it, tenants share slots by hash.
TENANT_SLOTS = 4096
NO_HEAD = -1
# /list_servers' FAIR_SHARES count the requests started in about this many last seconds.
SHARE_WINDOW_S = 60.0
# Bytes of a tenant slot's owner: a route's name ("endpoint@label", 129 bytes at most:
# names.py), a NUL, a tenant's (64).
OWNER_BYTES = 200
# The tenant of a request without a key or X-Customer-ID.
ANONYMOUS = "anonymous"
QUEUE_SECONDS = Histogram(
    "bis_queue_seconds", "Time requests waited in the front's fair queue (FAIR_QUEUEING), "
    "by endpoint and priority class (only requests that waited)", ["endpoint", "class"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


class SharedTags:
    """The fair queue's shared memory: heads per process and endpoint, each class's
    virtual time per endpoint, and finish tags and served counts per tenant."""

    def __init__(self, board: LoadBoard) -> None:
        self.board = board
        rows, columns = board.rows, board.columns
        self.head_rank = multiprocessing.RawArray(ctypes.c_int32, [NO_HEAD] * (rows * columns))
        self.head_tag = multiprocessing.RawArray(ctypes.c_double, rows * columns)
        self.vtime = multiprocessing.RawArray(ctypes.c_double, columns * MAX_CLASSES)
        self.tenant_ids = multiprocessing.RawArray(ctypes.c_uint64, TENANT_SLOTS)
        # Each slot's "endpoint NUL tenant", so any process can list every slot's owner.
        self.owners = multiprocessing.RawArray(ctypes.c_char, TENANT_SLOTS * OWNER_BYTES)
        self.finish = multiprocessing.RawArray(ctypes.c_double, TENANT_SLOTS)
        # Served per process row (each writes its own: no update lost), summed to read.
        self.started = multiprocessing.RawArray(ctypes.c_int64, rows * TENANT_SLOTS)
        self._lock = multiprocessing.Lock()
        self._slots: dict[tuple[str, str], int] = {}
        # A pipe per process row: a byte on it wakes that process's queue.
        self.wakers = [os.pipe() for _ in range(rows)]
        for read, write in self.wakers:
            os.set_blocking(read, False)
            os.set_blocking(write, False)

    def clear_row(self, row: int) -> None:
        """A new front process in ``row``: no head of a dead one's left there."""
        start = row * self.board.columns
        for i in range(start, start + self.board.columns):
            self.head_rank[i] = NO_HEAD

    def tenant_slot(self, endpoint: str, tenant: str) -> int:
        """The shared slot of ``tenant``'s tags on ``endpoint`` (claimed on first use)."""
        slot = self._slots.get((endpoint, tenant))
        if slot is not None:
            return slot
        owner = (endpoint + "\0" + tenant).encode()
        ident = slot_hash(endpoint + "\0" + tenant)
        start = ident % TENANT_SLOTS
        with self._lock:
            for i in range(TENANT_SLOTS):
                slot = (start + i) % TENANT_SLOTS
                if self.tenant_ids[slot] in (ident, 0):
                    if not self.tenant_ids[slot]:
                        at = slot * OWNER_BYTES
                        ctypes.memmove(ctypes.addressof(self.owners) + at, owner, len(owner))
                    self.tenant_ids[slot] = ident
                    break
            else:
                slot = start  # full: tenants share by hash (bounded, blurred)
        if len(self._slots) >= TENANT_SLOTS:
            self._slots.clear()
        self._slots[(endpoint, tenant)] = slot
        return slot

    def served(self) -> dict[str, dict[str, int]]:
        """Requests started per endpoint and tenant, over every process."""
        out: dict[str, dict[str, int]] = {}
        for slot in range(TENANT_SLOTS):
            if self.tenant_ids[slot]:
                at = slot * OWNER_BYTES
                owner = ctypes.string_at(ctypes.addressof(self.owners) + at, OWNER_BYTES)
                endpoint, _, tenant = owner.rstrip(b"\0").decode().partition("\0")
                out.setdefault(endpoint, {})[tenant] = sum(self.started[slot::TENANT_SLOTS])
        return out

    def wake(self, row: int) -> None:
        """Tell the process in ``row`` to look at its queue (a full pipe: it will)."""
        try:
            os.write(self.wakers[row][1], b"\0")
        except BlockingIOError:
            pass


@dataclass
class Lane:
    """One endpoint's columns of the load board, and how many requests it runs at once."""

    running: int
    waiting: int
    cap: int = 1


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
        # (when, counts) marks of shares(): the base of the window it reports.
        self._marks: deque[tuple[float, dict[str, dict[str, int]]]] = deque()

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
        lane.cap = max(1, len(route.workers)) * route.slots
        board = self.board
        if board.load_at(lane.waiting) or board.load_at(lane.running) >= lane.cap:
            return False
        board.add_at(lane.running, 1)
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

    def give_back(self, name: str) -> None:
        """A request of ``name`` ended: its slot goes to the next waiting request."""
        lane = self._lanes[name]
        self.board.add_at(lane.running, -1)
        if self.board.load_at(lane.waiting) > 0:
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
        :data:`SHARE_WINDOW_S` or so (since the start at the first read), and their
        share of the endpoint's."""
        now = time.monotonic()
        counts = self.shared.served()
        marks = self._marks
        while len(marks) > 1 and now - marks[1][0] >= SHARE_WINDOW_S:
            marks.popleft()  # the newest mark at least a window old is the base
        base = marks[0][1] if marks else {}
        if not marks or now - marks[-1][0] >= SHARE_WINDOW_S / 4:
            marks.append((now, counts))
        out: dict[str, dict[str, dict[str, float]]] = {}
        for name, tenants in counts.items():
            started = {t: n - base.get(name, {}).get(t, 0) for t, n in tenants.items()}
            total = sum(started.values())
            out[name] = {t: {"STARTED": n, "SHARE": round(n / total, 4) if total else 0.0}
                         for t, n in started.items()}
        return out


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


async def in_turn(fair: FairQueue, standing: Standing, route: Route, req: Request,
                  send: Callable[[], Awaitable[UpstreamResponse]]) -> UpstreamResponse:
    """Send a request (``send``) once the fair queue gives it its turn; the turn passes
    on when the answer (or its stream) ends."""
    name = route.name
    if not fair.take_now(route, standing):
        waited = time.perf_counter()
        await fair.take(route, standing, req.deadline)
        if req.trace is not None:
            req.trace.record("queue", waited, time.perf_counter())
    resp = None
    try:
        resp = await send()
        return resp
    finally:
        if resp is not None and resp.stream is not None:
            resp.stream.hold(lambda _end: fair.give_back(name))
        else:
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
