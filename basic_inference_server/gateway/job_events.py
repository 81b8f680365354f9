"""``GET /jobs/<id>/events``: a job's events as Server-Sent Events, on the event loop.

The events live in the results store (see :mod:`..queues.base`: ``queued``, ``running``,
``progress``, ``chunk``, then ``done``, ``failed`` or ``cancelled``), each with its id
(1, 2, ... per job), written as :mod:`..streams` writes a streamed answer's events. The
front reads them by polling the store every :data:`POLL` seconds (one read off the loop
per poll, no thread held between polls); the stream ends after the job's last event, or
when the job is over and that event was sent before, after one more poll (a cancel
writes the record a moment before its end event). A watcher that sends
``Last-Event-ID: n`` gets the events after ``n``, each once.

Bounds: a watcher is held at most the jobs' TTL (``JOB_TTL``); while no event comes, a
``: keepalive`` comment is sent every :data:`KEEPALIVE` seconds so proxies keep the
connection open. A watcher that leaves ends its generator: it costs nothing further.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from ..errors import BadRequest, MethodNotAllowed, ServingError
from ..queues.base import EVENT_ENDS, TERMINAL
from ..streams import STREAM_HEADERS, Format, event
from ..tenants.gate import TenantGate
from ..wire.message import Answer, Request, error_answer
from .jobs import JobsFront

# How often a watcher's store is read while nothing comes.
POLL = 0.2
# The longest quiet time before a ``: keepalive`` comment.
KEEPALIVE = 15.0
# Events read from the store at once.
BATCH = 500
PREFIX, SUFFIX = "/jobs/", "/events"
# A job id: a uuid4's hex (see the API table's route).
ID_LENGTH = 32
KEEPALIVE_COMMENT = b": keepalive\n\n"

OffLoop = Callable[..., Awaitable[Any]]


def events_job_id(path: str) -> str | None:
    """The job id of an events path (``/jobs/<id>/events``), else None."""
    if not (path.startswith(PREFIX) and path.endswith(SUFFIX)):
        return None
    job_id = path[len(PREFIX):-len(SUFFIX)]
    return job_id if len(job_id) == ID_LENGTH and "/" not in job_id else None


def last_event_id(req: Request) -> int:
    """The ``Last-Event-ID`` header as an event id (0 without one); 400 when malformed."""
    for name, value in req.headers:
        if name.lower() == b"last-event-id":
            text = value.decode("latin-1").strip()
            if not text.isdigit() or len(text) > 12:
                raise BadRequest("Last-Event-ID must be the id of an event (a whole number)")
            return int(text)
    return 0


async def job_events(jobs: JobsFront, req: Request, job_id: str, gate: TenantGate | None,
                     off_loop: OffLoop, meta: dict[str, Any]) -> Answer:
    """The answer of ``GET /jobs/<id>/events``: 200 and the stream, or a JSON error
    (401 without a usable key with API_KEYS on, 404 for an unknown job or another
    tenant's, 405 for another method)."""
    try:
        if req.method != "GET":
            raise MethodNotAllowed(f"{req.method} is not allowed on {req.path}; use GET",
                                   allow=("GET",))
        key = await gate.authenticate(req.headers) if gate is not None else None
        after = last_event_id(req)
        await off_loop(jobs.record, job_id, key)
    except ServingError as err:
        return error_answer(err, meta)
    ttl = jobs.spec.ttl if jobs.spec is not None else 0.0
    return Answer(200, [("Content-Type", Format.SSE.content_type), *STREAM_HEADERS],
                  stream=_stream(jobs, job_id, after, ttl, off_loop))


async def _stream(jobs: JobsFront, job_id: str, after: int, ttl: float,
                  off_loop: OffLoop) -> AsyncGenerator[bytes, None]:
    """The job's events after ``after``, until its last one (or the TTL)."""
    now = time.monotonic()
    deadline, quiet_since = now + ttl, now
    over = False  # the record said the job is over, and no event came since
    while time.monotonic() < deadline:
        try:
            batch, status = await off_loop(jobs.poll, job_id, after, BATCH)
        except ServingError:
            batch, status = [], ""  # the store is away: try again at the next poll
        for seq, name, data in batch:
            yield event(Format.SSE, name, seq, data)
            after = seq
            if name in EVENT_ENDS:
                return
        if batch:
            quiet_since, over = time.monotonic(), False
            continue
        if status is None or (over and status in TERMINAL):
            return  # gone (expired), or over with its last event sent before
        # A cancel writes the record a moment before the end event: one more look.
        over = status in TERMINAL
        if time.monotonic() - quiet_since >= KEEPALIVE:
            yield KEEPALIVE_COMMENT
            quiet_since = time.monotonic()
        await asyncio.sleep(POLL)

