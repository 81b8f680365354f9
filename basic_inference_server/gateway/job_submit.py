"""Job submission at the front: ``POST /jobs``, or ``/run`` with ``"ASYNC": true``.

The body is decoded first: the decoded body names the endpoint checked, limited and
queued (its bytes are not scanned here). The caller's key is checked against that
endpoint at submit time, as a ``/run``'s would be; the queue I/O runs in the front's
thread pool.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .. import protocol
from ..contracts import EndpointState
from ..deadlines import deadline_seconds
from ..errors import BadRequest, ServingError
from ..names import split_target
from ..tenants.keys import ApiKey
from ..tenants.priorities import Priorities
from ..tenants.quotas import Reservation
from ..tracing import Tracer
from ..wire.message import Answer, Request, error_answer
from . import metrics
from .fair_queue import standing_of
from .jobs import NO_FIELDS, JobFields, JobsFront, Once, job_route
from .routes import RouteTable
from .run_plan import NO_LABEL, header, series
from .tenancy import NO_HOLD, Tenancy, TenantHold

# Bodies this large are decoded off the event loop.
DECODE_SMALL = 64 * 1024
MAX_IDEMPOTENCY_KEY = 255


def queued_now(answer: Answer | None) -> bool:
    """Whether a submission queued a job (not refused, not an Idempotency-Key's replay)."""
    return answer is not None and answer.status == 202 \
        and ("Idempotent-Replayed", "true") not in answer.headers


def idempotency_key(req: Request) -> str | None:
    """The request's ``Idempotency-Key`` (None: it has none); 400 when unusable."""
    value = header(req, b"idempotency-key")
    if value is None:
        return None
    if not (0 < len(value) <= MAX_IDEMPOTENCY_KEY and value.isascii() and value.isprintable()):
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII "
                         "characters")
    return value
OffLoop = Callable[..., Awaitable[Any]]
Meta = Callable[[], dict[str, Any]]


@dataclass
class JobSubmitter:
    """Checks, limits and enqueues the jobs of one front process."""

    jobs: JobsFront
    routes: RouteTable
    tenancy: Tenancy
    off_loop: OffLoop
    meta: Meta
    wake: Callable[[str], None]  # starts an endpoint scaled to zero (MIN_WORKERS 0)
    # The classes a job's rank comes from: the queue serves lower ranks first.
    priorities: Priorities = field(default_factory=lambda: Priorities(["standard"], "standard"))
    tracer: Tracer | None = None  # TRACING: set in each front process

    async def submit(self, req: Request) -> Answer:
        """Decode the body, check the key against the endpoint it names, enqueue (traced
        as ``jobs`` when TRACING samples a POST /jobs; a /run's is its run's)."""
        if req.trace is not None or self.tracer is None:
            return await self._submit(req)
        req.trace = self.tracer.begin("jobs", req.headers, req.received or time.perf_counter(),
                                      True, **{"bis.request_id": req.request_id})
        answer = await self._submit(req)
        if req.trace is not None:
            req.trace.end({"http.response.status_code": answer.status})
        return answer

    async def _submit(self, req: Request) -> Answer:
        label = NO_LABEL  # the endpoint label until a valid SIGNATURE is read
        held: Reservation | None = None
        try:
            # (no internal call submits jobs: a job always has its caller's key)
            if not self.tenancy.identify_now(req, internal=False):
                await self.tenancy.identify(req)
            body = await self.off_loop(protocol.parse_body, req.body) \
                if len(req.body) > DECODE_SMALL else protocol.parse_body(req.body)
            name = protocol.signature_of(body)
            label = split_target(name)[0]
            idempotency = idempotency_key(req)
            deadline = deadline_seconds(req.headers)
            rank = standing_of(self.priorities, req).rank
            held = await self._admit(req, label)
        except ServingError as err:
            metrics.count_request(*series(self.routes.table(), label, None), err.status)
            return error_answer(err, self.meta())
        key: ApiKey | None = req.key
        # The job runs with the tenant as X-Customer-ID, as a /run would: the key's, or
        # without keys the one the client sent.
        customer = key.tenant if key else header(req, b"x-customer-id")
        once = Once.of(idempotency, customer, name, body) if idempotency is not None else None
        answer: Answer | None = None
        try:
            expires = None if deadline is None else time.time() + deadline
            given = JobFields(key.id if key else None, customer, once, expires, rank)
            answer = await self._enqueued(req, name, body, given)
            self._wake_if_idle(name, answer)
        finally:
            if held is not None and not queued_now(answer):
                await self.tenancy.release(TenantHold(reservation=held))
        return answer

    async def _enqueued(self, req: Request, name: str, body: dict[str, Any],
                        given: JobFields) -> Answer:
        """Enqueue in the pool; a traced request's job carries its ``job submit`` span."""
        if req.trace is None:
            return await self.off_loop(self.enqueue, name, body, len(req.body), given)
        span = req.trace.start("job submit")
        try:
            given = dataclasses.replace(given, traceparent=req.trace.value(span))
            return await self.off_loop(self.enqueue, name, body, len(req.body), given)  # type: ignore[no-any-return]
        finally:
            req.trace.stop(span)

    def _wake_if_idle(self, name: str, answer: Answer) -> None:
        """A job queued for an endpoint scaled to zero starts it: its workers take the
        job from the queue."""
        route = self.routes.get(name, fresh=True) if answer.status == 202 else None
        if route is not None and route.state is EndpointState.IDLE:
            self.wake(name)

    async def _admit(self, req: Request, label: str) -> Reservation | None:
        """A job's key check at submit time, by its endpoint's label (as a ``/run``'s).

        Limits apply at submit time: one request, its concurrency slot given back once
        it is admitted. A requests quota's request is reserved here, kept once the job
        is queued (the job's consumer gives it back if the job does not end with a
        200); a units quota is checked, its units charged when the job runs."""
        hold = self.tenancy.admit_now(req, label) or await self.tenancy.admit(req, label)
        if hold is NO_HOLD:
            return None
        reservation, hold.reservation = hold.reservation, None
        if not self.tenancy.release_now(hold):
            await self.tenancy.release(hold)
        return reservation

    def enqueue(self, name: str, body: dict[str, Any], size: int,
                given: JobFields = NO_FIELDS) -> Answer:
        """Enqueue the decoded job ``body`` for ``name`` (``size``: its bytes); in the pool."""
        try:
            route = job_route(self.routes.table().record, name) \
                or job_route(self.routes.table(fresh=True).record, name)
            status, headers, answer = self.jobs.submit(name, body, size, route, self.meta(),
                                                       given)
        except ServingError as err:
            metrics.count_request(*series(self.routes.table(), *split_target(name)), err.status)
            return error_answer(err, self.meta())
        return Answer(status, headers, answer)
