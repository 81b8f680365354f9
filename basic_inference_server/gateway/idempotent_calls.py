"""``Idempotency-Key`` on the OpenAI routes: the same key again gets the same answer.

The first call with a key claims a record in the job results store (the store of
``POST /jobs``' keys: :class:`.jobs.Once`, created in one atomic step, shared by every
front process and every gateway naming the same store), runs, and keeps its whole 200
answer there until ``JOB_TTL``. A repeat gets that answer (``Idempotent-Replayed:
true``), without running again; while the first still runs, 409 with ``Retry-After``;
with another request, 409. An answer that is not a 200 is not kept: the key is free
again. A stream is not replayed: a streamed call runs each time (its key is read for
its form only).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import Conflict, ServingError
from ..queues.base import DONE, Job
from ..wire.message import Answer, Request
from .job_submit import idempotency_key
from .jobs import JobsFront, Once, create_record, ttl_of

log = logging.getLogger(__name__)
OffLoop = Callable[..., Awaitable[Any]]
# The records' endpoint name: no endpoint has it (names do not start with '/').
RECORDS = "/v1"
REPLAYED = ("Idempotent-Replayed", "true")


@dataclass(frozen=True)
class Claim:
    """A call that holds its key's record: its answer is kept when it ends."""

    once: Once


class IdempotentCalls:
    """The Idempotency-Keys of one front process's OpenAI calls."""

    def __init__(self, jobs: JobsFront, off_loop: OffLoop) -> None:
        self.jobs = jobs
        self.off_loop = off_loop

    async def begin(self, req: Request, stream: bool) -> Claim | Answer | None:
        """None: no key; a :class:`Claim` to :meth:`finish`; or the kept answer."""
        key = idempotency_key(req)
        if key is None or stream:  # a stream is not replayed: it runs each time
            return None
        tenant = req.key.tenant if req.key is not None else None
        once = Once.of(key, tenant, req.path, {"BODY": req.body.decode("utf-8", "replace")})
        result: Claim | Answer = await self.off_loop(self._claim, once)
        return result

    def _claim(self, once: Once) -> Claim | Answer:
        _queue, results = self.jobs.backends()
        job = Job(endpoint=RECORDS, body={}, id=once.job_id)
        if self.jobs.backend_call("keeping a call", lambda: create_record(results, job, once)):
            return Claim(once)
        record = self.jobs.backend_call("reading a call", lambda: results.get(once.job_id)) or {}
        if record.get("IDEMPOTENCY") not in (None, once.digest):
            raise Conflict("this Idempotency-Key was used for another request; use a new key "
                           "for a new request")
        if record.get("STATUS") != DONE:
            raise Conflict("a call with this Idempotency-Key is still running", retry_after=1)
        kept = record.get("ANSWER") or {}
        return Answer(200, [*map(tuple, kept.get("headers", [])), REPLAYED],
                      str(kept.get("body", "")).encode())

    async def finish(self, claim: Claim, answer: Answer) -> None:
        """Keep a whole 200 answer for the key's repeats; else free the key. The store
        failing now costs the repeats, not this answer (logged)."""
        try:
            await self.off_loop(self._finish, claim.once.job_id, answer)
        except ServingError as err:
            log.warning("Idempotency-Key: the answer was not kept: %s", err.message)

    def _finish(self, job_id: str, answer: Answer) -> None:
        _queue, results = self.jobs.backends()
        if answer.status != 200 or answer.stream is not None:
            self.jobs.backend_call("freeing a call's key", lambda: results.delete(job_id))
            return
        kept = {"headers": [list(h) for h in answer.headers], "body": answer.body.decode()}
        self.jobs.backend_call("keeping a call's answer", lambda: results.update(
            job_id, {"STATUS": DONE, "ANSWER": kept}, ttl=ttl_of(self.jobs.spec)))

