"""The async side of the front: submit jobs, read their status, manage dead letters.

``POST /run`` with ``"ASYNC": true`` and ``POST /jobs`` are the same call: the request
is checked as ``/run`` checks it (body, ``SIGNATURE``, size, known endpoint), recorded
as ``queued``, enqueued, and answered ``202`` with its ``JOB_ID`` at once. The
endpoint's workers pull it when they are free (see ``server/consumer.py``); the jobs
of endpoints without a server of their own (pipelines, remote endpoints, endpoints
with VERSIONS) are pulled by the job runner, which runs them through ``/run``.
``GET /jobs/<id>`` reads the record, ``DELETE /jobs/<id>`` cancels the job (see
:meth:`JobsFront.cancel`), ``GET /jobs/<id>/events`` streams its events (see
:mod:`.job_events`); ``/jobs/dead`` and ``/jobs/requeue`` (admin) list and requeue dead
letters.

The queue and results store are opened lazily, per front process and after the fork:
connections must not be shared across processes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Response, request
from prometheus_client.core import GaugeMetricFamily

from .. import protocol
from ..cancellations import JOB_WAITING, count_cancelled
from ..errors import BadRequest, Conflict, NotFound, QueueFull, ServingError, Unavailable
from ..flask_body import json_body
from ..names import split_target
from ..queues import JobQueue, JobsSpec, ResultStore, open_queue, open_results
from ..queues.base import CANCELLED, QUEUED, TERMINAL, Job, new_job_id
from ..redact import mask_text
from . import metrics

log = logging.getLogger(__name__)

Reply = Callable[..., Response]


@dataclass(frozen=True)
class Once:
    """A job asked for with an ``Idempotency-Key``: its id, derived from the tenant and
    the key, and the digest of its request (a key reused for another one is a 409)."""

    job_id: str
    digest: str

    @classmethod
    def of(cls, key: str, tenant: str | None, name: str, body: dict[str, Any]) -> Once:
        """The job of ``key`` for ``tenant`` (None: no tenant: keys off, no customer)."""
        scope = hashlib.blake2b(f"{tenant or ''}\0{key}".encode(), digest_size=16,
                                person=b"bis-idempotency")
        request = hashlib.blake2b(name.encode() + b"\0" + orjson.dumps(
            body, option=orjson.OPT_SORT_KEYS), digest_size=16)
        return cls(scope.hexdigest(), request.hexdigest())


def ttl_of(spec: JobsSpec | None) -> float:
    """How long a finished job's record is kept (jobs configured)."""
    assert spec is not None
    return spec.ttl


@dataclass(frozen=True)
class JobFields:
    """What a job is besides its endpoint and body."""

    key_id: str | None = None  # the API key charged for its run
    # The customer id the endpoint gets when it runs (its key's, with API_KEYS on).
    tenant: str | None = None
    once: Once | None = None  # its Idempotency-Key's job id and body digest
    expires_at: float | None = None  # when it goes to the dead letters unstarted
    rank: int | None = None  # its priority class's
    traceparent: str | None = None  # its submit's trace context (TRACING sampled it)


NO_FIELDS = JobFields()


def create_record(results: ResultStore, job: Job, once: Once | None) -> bool:
    """Record a job as queued; with an Idempotency-Key only when its id has no record yet
    (False: made before)."""
    if once is None:
        results.create(job)
        return True
    if not results.create_once(job):
        return False
    results.update(job.id, {"IDEMPOTENCY": once.digest})
    return True


def replayed(record: dict[str, Any] | None, job_id: str, once: Once, meta: dict[str, Any]
             ) -> tuple[int, list[tuple[str, str]], bytes]:
    """The answer to an Idempotency-Key used before: its job, as it is now (409 when the
    key came with another request)."""
    record = record or {}
    if record.get("IDEMPOTENCY") not in (None, once.digest):
        raise Conflict("this Idempotency-Key was used for another request; use a new key for "
                       "a new request", JOB_ID=job_id)
    location = f"/jobs/{job_id}"
    answer = protocol.dumps({"JOB_ID": job_id, "STATUS": record.get("STATUS", QUEUED),
                             "SIGNATURE": record.get("SIGNATURE"), "STATUS_URL": location,
                             **meta})
    return 202, [("Content-Type", protocol.JSON), ("Location", location),
                 ("Idempotent-Replayed", "true")], answer


class JobsFront:
    """Submit and inspect jobs; one queue and results connection set per process."""

    def __init__(self, spec: JobsSpec | None) -> None:
        self.spec = spec
        self._pid = -1
        self._lock = threading.Lock()
        self._queue: JobQueue | None = None
        self._results: ResultStore | None = None

    def backends(self) -> tuple[JobQueue, ResultStore]:
        """This process's queue and results store (opened after a fork); 503 without."""
        if self.spec is None:
            raise Unavailable("async jobs are not configured on this gateway")
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    try:
                        self._queue = open_queue(self.spec.queue)
                        self._results = open_results(self.spec.results)
                    except Exception as exc:  # noqa: BLE001 - any client error: 503
                        raise Unavailable(f"the job queue is not available: {exc}",
                                          retry_after=1) from None
                    self._pid = os.getpid()
        assert self._queue is not None and self._results is not None
        return self._queue, self._results

    def backend_call(self, what: str, call: Callable[[], Any]) -> Any:
        """``call()``; a backend's failure is a 503 naming ``what``."""
        try:
            return call()
        except ServingError:
            raise
        except Exception as exc:  # noqa: BLE001 - an unreachable backend is a 503, not a 500
            log.warning("job queue error while %s: %s", what, exc)
            raise Unavailable(f"the job queue failed while {what}: {exc}", retry_after=1) from None

    # -- submit (from the front's /run and POST /jobs, in its thread pool) ---------------
    def submit(self, name: str, body: dict[str, Any], size: int, route: dict[str, Any] | None,
               meta: dict[str, Any], given: JobFields = NO_FIELDS
               ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Record and enqueue one request; answer 202 with its job id, as status, headers
        and body. ``size``: its body's bytes; ``given``: the rest of the job."""
        if route is None:
            raise NotFound(f"unknown SIGNATURE {name!r}")
        queue, results = self.backends()
        body = {k: v for k, v in body.items() if k != "ASYNC"}
        once, tenant, key_id = given.once, given.tenant, given.key_id
        job = Job(endpoint=name, body=body, id=once.job_id if once else new_job_id(),
                  tenant=tenant, key_id=key_id, expires_at=given.expires_at, rank=given.rank,
                  traceparent=given.traceparent)
        max_depth = route.get("max_queue_depth")
        max_bytes = route.get("max_queue_bytes")
        if max_bytes is not None:
            stored = self.backend_call("sizing the job queue", lambda: queue.stored_bytes(name))
            if stored is not None and stored + size > max_bytes:
                raise QueueFull(f"the job queue of {name} holds {stored} bytes of jobs; this one "
                                f"({size} bytes) would pass MAX_QUEUE_BYTES ({max_bytes}); try "
                                "again later", retry_after=1, SIGNATURE=name,
                                MAX_QUEUE_BYTES=max_bytes)

        def enqueue() -> bool | None:
            if not create_record(results, job, once):
                return None  # made before: the same job
            if key_id is not None:  # with API keys: the job is its tenant's only
                results.update(job.id, {"TENANT": tenant})
            results.add_event(job.id, QUEUED, {"SIGNATURE": name}, ttl_of(self.spec))
            try:
                accepted = queue.enqueue(job, max_depth)
            except Exception:
                results.delete(job.id)  # no record of a job that was never queued
                raise
            if not accepted:
                results.delete(job.id)
            return accepted

        made = self.backend_call("enqueuing a job", enqueue)
        if made is None:
            assert once is not None
            return replayed(self.backend_call("reading a job", lambda: results.get(job.id)),
                            job.id, once, meta)
        if not made:
            raise QueueFull(f"the job queue of {name} holds {max_depth} jobs (MAX_QUEUE_DEPTH); "
                            "try again later", retry_after=1, SIGNATURE=name,
                            MAX_QUEUE_DEPTH=max_depth)
        metrics.count_request(*split_target(name), 202)
        location = f"/jobs/{job.id}"
        answer = protocol.dumps({"JOB_ID": job.id, "STATUS": QUEUED, "SIGNATURE": name,
                                 "STATUS_URL": location, **meta})
        return 202, [("Content-Type", protocol.JSON), ("Location", location)], answer

    # -- read ---------------------------------------------------------------------------
    def record(self, job_id: str, key: Any = None) -> dict[str, Any]:
        """The job's record; 404 when unknown, or (``key``: the caller's API key, with
        API_KEYS on) when it is another tenant's: a key learns nothing of their jobs."""
        _queue, results = self.backends()
        record = self.backend_call("reading a job", lambda: results.get(job_id))
        if record is None or (key is not None and not (key.read_all_jobs
                                                       or record.get("TENANT") == key.tenant)):
            raise NotFound(f"no job {job_id!r} (unknown, or its result has expired)",
                           JOB_ID=job_id)
        return dict(record)

    def poll(self, job_id: str, after: int, limit: int
             ) -> tuple[list[tuple[int, str, dict[str, Any]]], str | None]:
        """The job's events after id ``after`` (at most ``limit``), and when there are
        none its status (None: the job is gone), read before them: once that status is
        final, the events read after it include the last one."""
        _queue, results = self.backends()

        def poll() -> tuple[list[tuple[int, str, dict[str, Any]]], str | None]:
            record = results.get(job_id)
            events = results.events(job_id, after, limit)
            return events, None if record is None else str(record.get("STATUS"))

        found: tuple[list[tuple[int, str, dict[str, Any]]], str | None] = \
            self.backend_call("reading a job's events", poll)
        return found

    # -- cancel ---------------------------------------------------------------------------
    def cancel(self, job_id: str, key: Any = None) -> tuple[int, dict[str, Any]]:
        """``DELETE /jobs/<id>``: a waiting job is cancelled at once (never run: its
        consumer moves it to the dead letters, or the queue does now where it can reach
        it), 200; a running one (also one a consumer started since the record was read)
        is asked to stop (its consumer sees it within a poll and ends it ``cancelled``),
        202. A finished job: 409. Cancelling again changes nothing."""
        queue, results = self.backends()
        record = self.record(job_id, key)

        def cancel() -> tuple[int, dict[str, Any]]:
            current, ttl = record, ttl_of(self.spec)
            if current.get("STATUS") == QUEUED:
                now = time.time()
                # Only while it still waits: a consumer that marked it running first
                # stops it instead (below), so a job cancelled here never runs.
                if results.update(job_id, {"STATUS": CANCELLED, "CANCEL_REQUESTED": now,
                                           "FINISHED_AT": now}, ttl=ttl, only_if=QUEUED):
                    # Its end event follows the record at once (a watcher that reads the
                    # record in between looks once more: see job_events).
                    results.add_event(job_id, CANCELLED, {"STATUS": CANCELLED, "RAN": False},
                                      ttl)
                    count_cancelled(str(record["SIGNATURE"]), JOB_WAITING)
                    queue.cancel_waiting(job_id, str(record["SIGNATURE"]))
                    return 200, results.get(job_id) or record
                current = self.record(job_id, key)  # claimed, or over, meanwhile
            status = current.get("STATUS")
            if status == CANCELLED:
                return 200, current
            if status in TERMINAL:
                raise Conflict(f"job {job_id} is already over ({status}): there is nothing "
                               "to cancel", JOB_ID=job_id, STATUS=status)
            now = time.time()  # running: its consumer ends it
            results.update(job_id, {"CANCEL_REQUESTED": now})
            return 202, {**current, "CANCEL_REQUESTED": now}

        answer: tuple[int, dict[str, Any]] = self.backend_call("cancelling a job", cancel)
        return answer

    def dead(self, name: str, limit: int) -> list[dict[str, Any]]:
        """The endpoint's dead letters, up to ``limit``, as ``/dead_letters`` lists them."""
        queue, _results = self.backends()
        jobs = self.backend_call("listing dead letters", lambda: queue.dead_letters(name, limit))
        return [{"JOB_ID": j.id, "SIGNATURE": j.endpoint, "ATTEMPTS": j.attempts,
                 "LAST_ERROR": j.last_error, "SUBMITTED_AT": j.submitted_at, "BODY": j.body}
                for j in jobs]

    def requeue(self, name: str, job_id: str | None) -> list[str]:
        """Put the endpoint's dead letters (one, or all) back in its queue; their ids."""
        queue, results = self.backends()

        def requeue() -> list[str]:
            ids = queue.requeue_dead(name, job_id)
            for one in ids:
                results.update(one, {"STATUS": QUEUED, "ATTEMPTS": 0, "REQUEUED_AT": time.time()})
            return ids

        ids: list[str] = self.backend_call("requeueing dead letters", requeue)
        return ids

    def status(self, names: list[str]) -> dict[str, Any]:
        """Per endpoint: jobs waiting or running, and the age of the oldest, in seconds."""
        if self.spec is None:
            return {}
        try:
            queue, results = self.backends()
            now = time.time()
            out: dict[str, Any] = {}
            for name in names:
                oldest = results.oldest_pending(name)
                out[name] = {"depth": queue.depth(name),
                             "oldest_age_s": round(now - oldest, 3) if oldest else 0.0}
            return out
        except Exception as exc:  # noqa: BLE001 - status pages report, they do not fail
            return {"error": mask_text(f"job queue not available: {exc}")}

    def collector(self, names: list[str]) -> QueueCollector:
        """A Prometheus collector of the queues of ``names``, read now."""
        return QueueCollector(self.status(names))


def job_route(table: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The route that bounds ``name``'s job queue: its own, or for an endpoint with
    VERSIONS (its jobs follow the traffic policy when they run) the tightest limits of
    its versions; None for an unknown name."""
    endpoints = table.get("endpoints", {})
    route: dict[str, Any] | None = endpoints.get(name)
    policy = table.get("traffic", {}).get(name)
    if route is not None or policy is None:
        return route
    routes = [endpoints[t] for t in policy["versions"].values() if t in endpoints]

    def tightest(key: str) -> Any:
        return min((r[key] for r in routes if r.get(key) is not None), default=None)

    return {"max_queue_depth": tightest("max_queue_depth"),
            "max_queue_bytes": tightest("max_queue_bytes")}


class QueueCollector:
    """``bis_queue_depth`` and ``bis_queue_oldest_seconds`` per endpoint, at scrape time."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status

    def collect(self) -> Any:
        """The two gauges, one sample per endpoint."""
        depth = GaugeMetricFamily("bis_queue_depth", "Async jobs waiting or running",
                                  labels=["endpoint"])
        oldest = GaugeMetricFamily("bis_queue_oldest_seconds",
                                   "Age of the oldest async job not finished", labels=["endpoint"])
        for name, info in self.status.items():
            if isinstance(info, dict):
                depth.add_metric([name], float(info["depth"]))
                oldest.add_metric([name], float(info["oldest_age_s"]))
        yield from (depth, oldest)


def job_views(jobs: JobsFront, reply: Reply,
              check_admin: Callable[[], None]) -> dict[str, Callable[..., Response]]:
    """The views of ``GET /jobs/<id>``, ``GET /jobs/dead`` and ``POST /jobs/requeue``
    (their routes: the API table)."""

    def signature_arg(args: dict[str, Any]) -> str:
        name = args.get("SIGNATURE")
        if not isinstance(name, str) or not name:
            raise BadRequest("SIGNATURE (the endpoint name) is required")
        return name

    def job_status(job_id: str) -> Response:
        """GET: the job's record; DELETE: cancel it (see :meth:`JobsFront.cancel`)."""
        key = request.environ.get("bis.api_key")
        if request.method == "DELETE":
            return reply(*jobs.cancel(job_id, key))
        return reply(200, jobs.record(job_id, key))

    def dead_letters() -> Response:
        check_admin()
        name = signature_arg(request.args.to_dict())
        try:
            limit = int(request.args.get("LIMIT", 100))
        except ValueError:
            raise BadRequest("LIMIT must be an integer") from None
        dead = jobs.dead(name, max(1, min(limit, 10000)))
        return reply(200, {"SIGNATURE": name, "DEAD_LETTERS": dead, "COUNT": len(dead)})

    def requeue() -> Response:
        check_admin()
        args = json_body()
        name = signature_arg(args)
        job_id = args.get("JOB_ID")
        if "JOB_ID" in args and not isinstance(job_id, str):
            raise BadRequest("JOB_ID must be a string (omit it to requeue every dead letter)")
        ids = jobs.requeue(name, job_id)
        if job_id is not None and not ids:
            raise NotFound(f"no dead letter {job_id!r} for {name}", JOB_ID=job_id)
        return reply(200, {"SIGNATURE": name, "REQUEUED": ids, "COUNT": len(ids)})

    return {"job_status": job_status, "dead_letters": dead_letters, "requeue": requeue}
