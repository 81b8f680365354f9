"""A job's events (``GET /jobs/<id>/events``) read as iterators: :class:`JobEvents` and
:class:`AsyncJobEvents`.

Each item is a :class:`JobEvent`: its id (1, 2, ... per job), its name (``queued``,
``running``, ``progress``, ``chunk``, then ``done``, ``failed`` or ``cancelled``) and its
data. The iteration ends after the job's last event, or when the gateway ends the
stream without it (the job expired, or the watch outlived ``JOB_TTL``). A connection
that drops is opened again with ``Last-Event-ID`` set to the last event read, so no
event is missed or read twice; after :data:`RECONNECTS` drops in a row without an event
the error is raised. A refusal (401, 404) raises the typed error, as every call does.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from httpx_sse import EventSource, ServerSentEvent

from .errors import InternalError
from .flows import Answer
from .streaming import transport_error

# The last event of a job.
ENDS = ("done", "failed", "cancelled")
# Drops in a row (no event read in between) before a watch gives up.
RECONNECTS = 5


@dataclass(frozen=True)
class JobEvent:
    """One event of a job."""

    id: int
    event: str
    data: dict[str, Any]

    @property
    def last(self) -> bool:
        """Whether it is the job's last event."""
        return self.event in ENDS


def parse(sse: ServerSentEvent) -> JobEvent:
    """The event an SSE message carries; InternalError when it is malformed."""
    try:
        data = orjson.loads(sse.data)
        event = JobEvent(int(sse.id), sse.event, data)
    except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
        raise InternalError(f"malformed job event {sse.event!r} (id {sse.id!r}): {exc}") from exc
    if not isinstance(data, dict):
        raise InternalError(f"job event {event.event} (id {event.id}) is not a JSON object")
    return event


class JobEvents:
    """A job's events, blocking: ``for event in bis.job_events(job_id)``; ``with`` closes it."""

    def __init__(self, open_answer: Callable[[int], Answer], after: int = 0) -> None:
        self._open = open_answer
        self.after = after  #: the id of the last event read
        self._events: Generator[JobEvent, None, None] | None = None

    def _read(self) -> Generator[JobEvent, None, None]:
        drops = 0
        while True:
            response: httpx.Response = self._open(self.after).body
            try:
                for sse in EventSource(response).iter_sse():
                    event = parse(sse)
                    self.after, drops = event.id, 0
                    yield event
                    if event.last:
                        return
                return  # ended without its last event: the job is gone
            except httpx.TransportError as exc:
                drops += 1
                if drops > RECONNECTS:
                    raise transport_error(exc) from exc
            finally:
                response.close()

    def __iter__(self) -> Iterator[JobEvent]:
        if self._events is None:
            self._events = self._read()
        return self._events

    def close(self) -> None:
        """Stop watching (the connection is closed)."""
        if self._events is not None:
            self._events.close()

    def __enter__(self) -> JobEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncJobEvents:
    """A job's events, awaited: ``async for event in bis.job_events(job_id)``."""

    def __init__(self, open_answer: Callable[[int], Awaitable[Answer]], after: int = 0) -> None:
        self._open = open_answer
        self.after = after  #: the id of the last event read
        self._events: AsyncGenerator[JobEvent, None] | None = None

    async def _read(self) -> AsyncGenerator[JobEvent, None]:
        drops = 0
        while True:
            response: httpx.Response = (await self._open(self.after)).body
            try:
                async for sse in EventSource(response).aiter_sse():
                    event = parse(sse)
                    self.after, drops = event.id, 0
                    yield event
                    if event.last:
                        return
                return
            except httpx.TransportError as exc:
                drops += 1
                if drops > RECONNECTS:
                    raise transport_error(exc) from exc
            finally:
                await response.aclose()

    def __aiter__(self) -> AsyncIterator[JobEvent]:
        if self._events is None:
            self._events = self._read()
        return self._events

    async def aclose(self) -> None:
        """Stop watching (the connection is closed)."""
        if self._events is not None:
            await self._events.aclose()

    async def __aenter__(self) -> AsyncJobEvents:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
