"""``GET /dashboard/events``: what the dashboard shows, as Server-Sent Events.

The dashboard page reads this one stream instead of polling the management API. The
events, written as :mod:`..streams` writes a streamed answer's (``id``, ``event``,
``data`` as JSON, one event per HTTP chunk):

- ``state``: ``/list_servers``' answer and ``/system_status``' (``SERVERS``,
  ``TRAFFIC``, ``SYSTEM_STATUS``, ``SYSTEM_ALERTS`` ...) in one object, whole, each
  time they change; ``ERROR`` instead while the manager does not answer;
- ``samples``: the health samples (the charts) newer than the last sent; the newest
  :data:`SAMPLES` first;
- ``events``: the history's events (restarts, alerts ...) newer than the last sent;
  the newest :data:`EVENTS` first.

One :class:`Feed` per front process reads the manager every :data:`POLL` seconds while
at least one dashboard watches (one read off the loop, however many watch) and keeps
the newest :class:`Snapshot`; each stream sends what its reader lacks of it. Nothing
is queued per connection: the connection asks for a stream's next frame only once its
writes drain (its flow control), so a slow reader gets the newest state when it is
ready for it, the ones in between skipped. A stream holds its cursor and one frame.

An event's id is a cursor, not a counter: ``<state digest>.<newest sample>.<newest
event>`` (the times in ms) says what its reader has, whichever front process sent it,
so ``Last-Event-ID`` resumes on any of them: the state again only if it changed since,
the samples and events after those the reader has.

Bounds: :data:`MAX_STREAMS` streams over all front processes (503 ``overloaded``
past it); a ``: keepalive`` comment after :data:`KEEPALIVE` quiet seconds; a stream
ends after :data:`MAX_AGE` seconds, so the page reconnects with its cursor and its
token is checked again. The admin token is needed as on every admin route.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import orjson

from ..control_api import HISTORY, LIST_SERVERS, SYSTEM_STATUS
from ..errors import BadRequest, MethodNotAllowed, Overloaded, ServingError
from ..ipc import ControlUnavailable, control_call
from ..streams import STREAM_HEADERS, Format
from ..wire.message import Answer, Request, error_answer
from .api_table import DASHBOARD_CURSOR
from .job_events import KEEPALIVE, KEEPALIVE_COMMENT
from .management import REFUSED, check_admin, check_host

if TYPE_CHECKING:
    from .app import Front

log = logging.getLogger(__name__)

# How often a watched feed reads the manager.
POLL = 1.0
# The longest a stream lasts before the page reconnects (and its token is checked again).
MAX_AGE = 300.0
# Dashboard streams at once, over all front processes.
MAX_STREAMS = 8
# The samples the page charts (its window) and the events it keeps.
SAMPLES = 180
EVENTS = 100
# Samples read at each poll once the window is full: more than a poll's worth.
FEW_SAMPLES = 10
# The board column counting the streams (see loadboard.py).
STREAMS_COLUMN = "#dashboard-streams"
# Fields that change at every read but need no event of their own: they go out with
# the next change (a health sample, at the latest).
UNTRACKED = ("uptime_s",)
CURSOR = re.compile(DASHBOARD_CURSOR)


@dataclass(frozen=True)
class Cursor:
    """What a reader has: the state's digest, the newest sample's and event's time (ms)."""

    state: str = ""
    sample: int = 0
    event: int = 0

    def __str__(self) -> str:
        return f"{self.state or '-'}.{self.sample}.{self.event}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """A ``Last-Event-ID``; 400 when it is not one this stream wrote."""
        match = CURSOR.fullmatch(text.strip())
        if match is None:
            raise BadRequest("Last-Event-ID must be the id of a dashboard event "
                             "(<state>.<sample>.<event>)")
        return cls(match.group(1) or "", int(match.group(2)), int(match.group(3)))


def _ms(record: dict[str, Any]) -> int:
    return int(float(record.get("ts", 0)) * 1000)


def digest(state: dict[str, Any]) -> str:
    """The state's digest, without its :data:`UNTRACKED` fields."""
    servers = {name: {k: v for k, v in info.items() if k not in UNTRACKED}
               if isinstance(info, dict) else info
               for name, info in (state.get("SERVERS") or {}).items()}
    tracked = {**state, "SERVERS": servers}
    return hashlib.blake2b(orjson.dumps(tracked, option=orjson.OPT_SORT_KEYS),
                           digest_size=8).hexdigest()


@dataclass(frozen=True)
class Snapshot:
    """One read of the manager: the state, its digest, the sample and event windows."""

    state: dict[str, Any]
    samples: tuple[dict[str, Any], ...] = ()
    events: tuple[dict[str, Any], ...] = ()
    state_digest: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "state_digest", digest(self.state))

    @property
    def cursor(self) -> Cursor:
        """The cursor of a reader that has all of it."""
        return Cursor(self.state_digest, _ms(self.samples[-1]) if self.samples else 0,
                      _ms(self.events[-1]) if self.events else 0)

    def news(self, cursor: Cursor) -> Iterator[tuple[str, dict[str, Any], Cursor]]:
        """The events a reader at ``cursor`` lacks, each with the cursor after it."""
        if self.state_digest != cursor.state:
            cursor = replace(cursor, state=self.state_digest)
            yield "state", self.state, cursor
        samples = [s for s in self.samples if _ms(s) > cursor.sample]
        if samples:
            cursor = replace(cursor, sample=_ms(samples[-1]))
            yield "samples", {"samples": samples}, cursor
        events = [e for e in self.events if _ms(e) > cursor.event]
        if events:
            cursor = replace(cursor, event=_ms(events[-1]))
            yield "events", {"events": events}, cursor


def frame(name: str, cursor: Cursor, data: dict[str, Any]) -> bytes:
    """One event: :func:`..streams.event`'s layout, with a cursor for its id."""
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (str(cursor).encode(), name.encode(),
                                                 orjson.dumps(data))


def _body(control: str, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    answer = control_call(control, request)
    return int(answer["status"]), answer["body"]


def read_manager(control: str, last: Snapshot | None,
                 shares: Callable[[], dict[str, Any]] | None = None) -> Snapshot:
    """A new snapshot from the manager's answers (blocking: run it off the loop); the
    sample window grows from ``last``'s. ``shares``: the fair queue's tenant shares
    (FAIR_SHARES), which the front keeps, not the manager."""
    samples = list(last.samples) if last is not None else []
    events = last.events if last is not None else ()
    try:
        _, servers = _body(control, LIST_SERVERS.request({}))
        code, status = _body(control, SYSTEM_STATUS.request({}))
        status.pop("HISTORY", None)  # the events come as events
        if code != 200:
            status = {"SYSTEM_ERROR": status.get("ERROR", "")}
        newest = _ms(samples[-1]) if samples else 0
        # No audit records: the dashboard draws samples and events.
        few = FEW_SAMPLES if samples else SAMPLES
        _, history = _body(control, HISTORY.request({"samples": few, "audit": 0}))
        fetched = history.get("samples", [])
        if samples and len(fetched) == FEW_SAMPLES and _ms(fetched[0]) > newest:
            # More samples were taken since the last read than a few: read the window.
            _, history = _body(control, HISTORY.request({"samples": SAMPLES, "audit": 0}))
    except ControlUnavailable as exc:
        return Snapshot({"ERROR": f"the gateway manager is not answering: {exc}"},
                        tuple(samples), events)
    samples += [s for s in history.get("samples", []) if _ms(s) > newest]
    if shares is not None:
        servers["FAIR_SHARES"] = shares()
    return Snapshot({**servers, **status}, tuple(samples[-SAMPLES:]),
                    tuple(history.get("events", [])[-EVENTS:]))


Reader = Callable[[Snapshot | None], Awaitable[Snapshot]]


class Feed:
    """The newest snapshot of one front process, read while someone watches.

    ``read(last)`` gives the next snapshot (awaitable); ``version`` counts the changes
    seen, and :meth:`changed` waits for the next.
    """

    def __init__(self, read: Reader, poll: float = POLL) -> None:
        self.read = read
        self.poll = poll
        self.snapshot: Snapshot | None = None
        self.version = 0
        self.watchers = 0
        self._task: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None

    @contextmanager
    def watching(self) -> Iterator[None]:
        """While inside, the feed is read every ``poll`` seconds."""
        self.watchers += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            yield
        finally:
            self.watchers -= 1

    async def _run(self) -> None:
        try:
            while self.watchers:
                try:
                    snapshot: Snapshot = await self.read(self.snapshot)
                except Exception:  # noqa: BLE001 - the watchers must not wait on a dead task
                    log.exception("reading the dashboard's state failed; next try in %s s",
                                  self.poll)
                else:
                    if self.snapshot is None or snapshot.cursor != self.snapshot.cursor:
                        self._publish(snapshot)
                    else:
                        self.snapshot = snapshot  # (its untracked fields are newer)
                await asyncio.sleep(self.poll)
        finally:
            # Unwatched, the snapshot grows stale: the next watcher waits for a fresh one.
            self.snapshot = None

    def _publish(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.version += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def changed(self, seen: int, timeout: float) -> None:
        """Return when ``version`` is past ``seen``, or after ``timeout`` seconds."""
        if self.version != seen or timeout <= 0:
            return
        if self._changed is None:
            self._changed = asyncio.Event()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass


async def stream(feed: Feed, cursor: Cursor, keepalive: float = KEEPALIVE,
                 max_age: float = MAX_AGE,
                 clock: Callable[[], float] = time.monotonic) -> AsyncGenerator[bytes, None]:
    """A reader's events from ``cursor`` on, until ``max_age``."""
    with feed.watching():
        started = quiet_since = clock()
        # The feed's version whose snapshot was sent: none yet (a first read may be due).
        seen = feed.version if feed.snapshot is None else -1
        while (age := clock() - started) < max_age:
            if feed.version != seen and feed.snapshot is not None:
                seen = feed.version
                for name, data, after in feed.snapshot.news(cursor):
                    yield frame(name, after, data)
                    cursor, quiet_since = after, clock()
            elif clock() - quiet_since >= keepalive:
                yield KEEPALIVE_COMMENT
                quiet_since = clock()
            await feed.changed(seen, min(keepalive - (clock() - quiet_since), max_age - age))


# One feed per front (a process has one; tests may build several).
_FEEDS: weakref.WeakKeyDictionary[Front, Feed] = weakref.WeakKeyDictionary()


def feed_of(front: Front) -> Feed:
    """The front's feed, made at its first stream (on its loop, after the fork)."""
    feed = _FEEDS.get(front)
    if feed is None:
        control = front.spec.control
        shares = front.dispatcher.fair.shares
        feed = _FEEDS[front] = Feed(lambda last: front.off_loop(read_manager, control, last,
                                                                shares))
    return feed


def _header(req: Request, name: bytes) -> str | None:
    return next((v.decode("latin-1") for h, v in req.headers if h.lower() == name), None)


async def _released(events: AsyncGenerator[bytes, None],
                    release: Callable[[], None]) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in events:
            yield chunk
    finally:
        await events.aclose()
        release()


async def answer(front: Front, req: Request) -> Answer:
    """The answer of ``GET /dashboard/events``: 200 and the stream, or a JSON error (401
    without the admin token, 403 for a Host not allowed, 400 for a malformed
    ``Last-Event-ID``, 405 for another method, 503 past :data:`MAX_STREAMS`)."""
    try:
        if req.method != "GET":
            raise MethodNotAllowed(f"{req.method} is not allowed on {req.path}; use GET",
                                   allow=("GET",))
        environ = {"HTTP_HOST": _header(req, b"host"),
                   "HTTP_AUTHORIZATION": _header(req, b"authorization")}
        check_host(environ, front.spec.allowed_hosts)
        check_admin(environ, front.spec.admin_token)
        last = _header(req, b"last-event-id")
        cursor = Cursor.parse(last) if last else Cursor()
        # Taken before the check (over all processes): two at once never both fit.
        front.board.add(STREAMS_COLUMN, 1)
        if front.board.load(STREAMS_COLUMN) > MAX_STREAMS:
            front.board.add(STREAMS_COLUMN, -1)
            raise Overloaded(f"{MAX_STREAMS} dashboard streams are open; close one",
                             retry_after=5, MAX_STREAMS=MAX_STREAMS)
    except ServingError as err:
        if err.status in REFUSED:
            front.refusals.count(req.peer[0], req.path)
        return error_answer(err, front.meta())
    headers = [("Content-Type", Format.SSE.content_type), *STREAM_HEADERS,
               ("X-Content-Type-Options", "nosniff")]
    return Answer(200, headers, stream=_released(stream(feed_of(front), cursor),
                                                 lambda: front.board.add(STREAMS_COLUMN, -1)))
