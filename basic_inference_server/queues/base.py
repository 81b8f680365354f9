"""The job, the queue interface every backend implements, and the results store interface.

A job is one ``/run`` request accepted for later: the gateway enqueues it, a worker of
the endpoint's server claims it when it has nothing else to do, runs the pipeline,
stores the answer in the results store and acks it. A claim that is neither acked nor
released (its consumer died) becomes claimable again: after a visibility timeout on
sqlite, Redis and SQS, when the connection drops on RabbitMQ. So a job may run twice
after a crash, but it is never lost; results are keyed by job id, so it is never
stored twice either.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

# Job states, as GET /jobs/<id> reports them.
QUEUED = "queued"      # waiting to be claimed (also between attempts)
RUNNING = "running"    # claimed by a worker
DONE = "done"          # the endpoint answered 200; the answer is stored
FAILED = "failed"      # the endpoint rejected the input (4xx): retrying would not help
DEAD = "dead"          # failed MAX_ATTEMPTS times; in the dead-letter queue
CANCELLED = "cancelled"  # DELETE /jobs/<id>: never run (a dead letter), or stopped
TERMINAL = (DONE, FAILED, DEAD, CANCELLED)
# States a record keeps once in them: a late update of another run cannot undo them.
STICKY = (DONE, CANCELLED)

# The events of a job (GET /jobs/<id>/events), ids 1, 2, ... per job: ``queued``,
# ``running``, ``progress`` (the worker reports it), ``chunk`` (a streaming endpoint's),
# and last one of ``done``, ``failed`` (a dead letter too: its STATUS says ``dead``) or
# ``cancelled``. Nothing is stored after the last one.
EVENT_ENDS = (DONE, FAILED, CANCELLED)
# The dead letters' LAST_ERROR of a cancelled job.
CANCELLED_ERROR = "cancelled (DELETE /jobs/<id>)"
# At most this many events per job: past it only the last one is stored.
MAX_EVENTS = 10_000
# How the record's status names the last event.
END_EVENT = {DONE: DONE, FAILED: FAILED, DEAD: FAILED, CANCELLED: CANCELLED}


def new_job_id() -> str:
    """A new, unique job id."""
    return uuid.uuid4().hex


# Most of an undecodable message kept with its stand-in (for the dead letters).
UNDECODABLE_KEEP = 64 * 1024
# Priority classes: a job's rank is 0 (served first) .. MAX_RANKS - 1.
MAX_RANKS = 8


@dataclass
class Job:
    """One accepted request. ``attempts`` counts the runs started, this one included.

    ``undecodable`` is set on the stand-in for a queue message that could not be
    decoded: why, and the message's text. It is never run; each claim counts as a
    failed attempt, so it reaches the dead letters after ``MAX_ATTEMPTS``.

    ``tenant`` is the customer id the endpoint gets as ``X-Customer-ID`` when the job
    runs; ``key_id`` the API key whose quota and metering its run is charged to.
    ``expires_at``: when a job not yet started goes to the dead letters instead.
    ``rank``: the rank of the submitting key's priority class, 0 (served first) to
    ``MAX_RANKS - 1``; None (a job of before classes) is served as rank 0.
    ``traceparent``: the W3C trace context of its submit, when tracing sampled it.
    """

    endpoint: str
    body: dict[str, Any]
    id: str = field(default_factory=new_job_id)
    submitted_at: float = field(default_factory=time.time)
    attempts: int = 0
    last_error: str | None = None
    undecodable: str | None = None
    tenant: str | None = None
    key_id: str | None = None
    # X-Request-Deadline at submit: a job not started by then (time.time()) goes to the
    # dead letters unrun.
    expires_at: float | None = None
    rank: int | None = None
    traceparent: str | None = None

    @property
    def queue_rank(self) -> int:
        """The rank the queues serve the job at (a job without one: 0)."""
        return self.rank or 0

    def encode(self) -> bytes:
        """The job as stored in a queue (JSON)."""
        data = asdict(self)
        for name in ("undecodable", "tenant", "key_id", "expires_at", "rank", "traceparent"):
            if data[name] is None:
                del data[name]  # the wire format of a job without them stays as it was
        return orjson.dumps(data)

    @classmethod
    def decode(cls, raw: bytes | str) -> Job:
        """The job in ``raw``; ValueError or TypeError when it is not a well-formed job."""
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"a job must be a JSON object, not {type(data).__name__}")
        job = cls(**data)
        fields_ok = (isinstance(job.endpoint, str) and isinstance(job.body, dict)
                     and isinstance(job.id, str) and type(job.attempts) is int
                     and isinstance(job.submitted_at, (int, float))
                     and all(v is None or isinstance(v, str)
                             for v in (job.tenant, job.key_id, job.traceparent))
                     and (job.expires_at is None or type(job.expires_at) in (int, float))
                     and (job.rank is None
                          or (type(job.rank) is int and 0 <= job.rank < MAX_RANKS)))
        if not fields_ok:
            raise ValueError("a job field has the wrong type")
        return job

    @classmethod
    def decode_or_stand_in(cls, raw: bytes | str, endpoint: str, message_id: str) -> Job:
        """The job in ``raw``, or a stand-in (see ``undecodable``) when it cannot be decoded."""
        try:
            return cls.decode(raw)
        except (ValueError, TypeError) as exc:
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            return cls(endpoint=endpoint, body={}, id=message_id,
                       undecodable=f"{type(exc).__name__}: {exc}; message: "
                                   f"{text[:UNDECODABLE_KEEP]}")


@dataclass
class Claim:
    """A job a consumer holds, with what its backend needs to ack or release it."""

    job: Job
    receipt: Any = None


class QueueError(Exception):
    """The queue backend failed (unreachable, refused the message)."""


class JobQueue(ABC):
    """A queue per endpoint with at-least-once delivery and a dead-letter queue."""

    @abstractmethod
    def enqueue(self, job: Job, max_depth: int | None = None) -> bool:
        """Add a job; False (nothing added) when ``depth`` is already ``max_depth``."""

    def stored_bytes(self, endpoint: str) -> int | None:
        """Bytes the endpoint's waiting and running jobs take in the queue (for
        ``MAX_QUEUE_BYTES``); None where the backend cannot tell, and then
        ``MAX_QUEUE_DEPTH`` x ``MAX_REQUEST_SIZE`` is what bounds them."""
        return None

    def cancel_waiting(self, job_id: str, endpoint: str) -> bool:
        """Move a waiting (not claimed) job of ``endpoint`` to the dead letters as
        cancelled, where the backend can take one message out by its job id; False
        where it cannot, or the job is not waiting there (the consumer that claims it
        dead-letters it instead, unrun)."""
        return False

    @abstractmethod
    def claim(self, endpoint: str, consumer: str, wait: float,
              visibility_timeout: float) -> Claim | None:
        """Take the next job, waiting up to ``wait`` seconds; None when there is none.

        If the claim is neither acked nor released within ``visibility_timeout``
        seconds, the job may be claimed again (its consumer is presumed dead).
        """

    @abstractmethod
    def ack(self, claim: Claim) -> None:
        """The job finished (its result is stored): remove it for good."""

    @abstractmethod
    def release(self, claim: Claim) -> None:
        """Give back a job that was not started; it does not count as an attempt."""

    @abstractmethod
    def retry_later(self, claim: Claim, delay: float, error: str) -> None:
        """The attempt failed: make the job claimable again after ``delay`` seconds."""

    @abstractmethod
    def dead_letter(self, claim: Claim, error: str) -> None:
        """Move the job to the endpoint's dead-letter queue with its last error."""

    @abstractmethod
    def depth(self, endpoint: str) -> int:
        """Jobs accepted and not finished: waiting, running or waiting for a retry."""

    @abstractmethod
    def dead_letters(self, endpoint: str, limit: int = 100) -> list[Job]:
        """Jobs in the dead-letter queue, oldest first, with ``last_error``."""

    @abstractmethod
    def requeue_dead(self, endpoint: str, job_id: str | None = None) -> list[str]:
        """Put dead jobs (one, or all when ``job_id`` is None) back in the queue with
        their attempts reset; returns the ids requeued."""

    @abstractmethod
    def close(self) -> None:
        """Release this thread's connections."""


class ResultStore(ABC):
    """Where job status and answers live, keyed by job id."""

    @abstractmethod
    def create(self, job: Job) -> None:
        """Record a job as queued (before it is enqueued)."""

    @abstractmethod
    def create_once(self, job: Job) -> bool:
        """:meth:`create`, only when no record of ``job.id`` exists, in one atomic step
        (an ``Idempotency-Key``'s job): True when this call made it."""

    @abstractmethod
    def update(self, job_id: str, fields: dict[str, Any], ttl: float | None = None,
               only_if: str | None = None) -> bool:
        """Merge ``fields`` into the record; a record already ``done`` or ``cancelled``
        keeps that status (True when the update was made).

        ``ttl``: the record expires that many seconds from now (terminal states).
        ``only_if``: make the update only while the record's status is this one (a
        cancel that must find the job still waiting).
        """

    @abstractmethod
    def add_event(self, job_id: str, name: str, data: dict[str, Any], ttl: float) -> int:
        """Store the job's next event; its id, or 0 when it is not stored (the job's last
        event is already there, or it has :data:`MAX_EVENTS` and this is not its last).
        The job's events expire ``ttl`` seconds after the latest."""

    @abstractmethod
    def events(self, job_id: str, after: int, limit: int) -> list[tuple[int, str, dict[str, Any]]]:
        """Up to ``limit`` of the job's events after id ``after``: (id, name, data)."""

    @abstractmethod
    def get(self, job_id: str) -> dict[str, Any] | None:
        """The record, or None when unknown or expired."""

    @abstractmethod
    def delete(self, job_id: str) -> None:
        """Forget a record (a submission that was refused)."""

    @abstractmethod
    def oldest_pending(self, endpoint: str) -> float | None:
        """Submission time of the oldest job of ``endpoint`` not finished yet."""

    @abstractmethod
    def close(self) -> None:
        """Release this thread's connections."""


def merge_record(record: dict[str, Any], fields: dict[str, Any], only_if: str | None) -> bool:
    """:meth:`ResultStore.update`'s rule, for the stores that apply it in Python: merge
    ``fields`` into ``record`` unless its status is sticky or not ``only_if`` (True when
    merged). Redis applies the same rule in its script."""
    status = record.get("STATUS")
    if status in STICKY and fields.get("STATUS", status) != status:
        return False
    if only_if is not None and status != only_if:
        return False
    record.update(fields)
    return True


def may_add_event(count: int, last: str | None, name: str) -> bool:
    """Whether a job's event ``name`` is stored after ``count`` events, the last ``last``."""
    if last in EVENT_ENDS:
        return False
    return name in EVENT_ENDS or count < MAX_EVENTS - 1


def record_of(job: Job) -> dict[str, Any]:
    """The first record of a job, as ``GET /jobs/<id>`` shows it."""
    return {"JOB_ID": job.id, "SIGNATURE": job.endpoint, "STATUS": QUEUED, "ATTEMPTS": 0,
            "SUBMITTED_AT": job.submitted_at, "STARTED_AT": None, "FINISHED_AT": None,
            "LAST_ERROR": None}


def url_options(url: str) -> tuple[str, dict[str, str]]:
    """A backend URL without its query, and the query as single values (``?prefix=``...)."""
    parts = urlsplit(url)
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return parts._replace(query="").geturl(), options
