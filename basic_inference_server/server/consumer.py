"""The job consumer of one endpoint worker process: pulls async jobs while the worker is idle.

Each gunicorn worker serves HTTP on one thread; the consumer is a second thread in the
same process. Both run the user's code only under one lock (the *gate*), so the model
never sees two calls at once. The consumer claims a job only when no request is being
served, and a request that arrives while a job runs waits for it, like a request
behind another request. No dispatcher pushes work: every worker of every server,
on this box or another, pulls from the endpoint's queue when it is free.

A job's run ends one of four ways: the pipeline answered 200 (result stored as
``done``, acked); it rejected the input (4xx: ``failed``, acked, no retry); it failed
otherwise (retried after ``RETRY_BACKOFF`` doubling, up to ``MAX_ATTEMPTS``, then moved
to the dead-letter queue with its last error); or the worker stopped before starting
it (released, not counted). Results are stored before the ack: a crash in between runs
the job again and overwrites the same result, it never loses it.

A job runs with its tenant as the customer id (``X-Customer-ID`` of a request), so
``CUSTOMER_MODELS`` serve jobs as they serve requests. With API keys on, the consumer
takes ``USAGE`` out of the stored result and charges the run to the job's key (see
:mod:`..tenants.ledger`) once the job is done, failed or dead.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..queues import JobQueue, JobsSpec, ResultStore, open_queue, open_results
from ..queues.base import DEAD, DONE, FAILED, QUEUED, RUNNING, Claim
from ..redact import mask_text, mask_url
from ..tenants import TenantsSpec
from ..tenants.ledger import JobLedger
from ..tenants.usage import take_usage
from ..worker import FileOutput
from .app import Outcome

log = logging.getLogger(__name__)

# Longest a claim waits for a job; also how long a stop may wait for the claim to return.
CLAIM_WAIT = 1.0
BACKOFF_CAP = 60.0
# Pause after the queue backend failed, before trying it again.
BACKEND_PAUSE = 1.0

Execute = Callable[[dict[str, Any], str | None], Outcome]  # inputs, customer id
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def retry_delay(base: float, attempts: int) -> float:
    """Backoff before the next attempt: ``base``, then doubled per attempt, capped."""
    return float(min(BACKOFF_CAP, base * 2 ** max(0, attempts - 1)))


def _storable(body: dict[str, Any] | FileOutput) -> dict[str, Any]:
    """A job result must be JSON: a file answer is stored base64-encoded."""
    if not isinstance(body, FileOutput):
        return body
    data = body.data if body.data is not None else Path(str(body.path)).read_bytes()
    return {"FILE": {"filename": body.filename, "mimetype": body.mimetype,
                     "base64": base64.b64encode(data).decode("ascii")}}


class JobConsumer:
    """Pulls the jobs of ``endpoint`` and runs them with ``execute`` while the worker is idle."""

    def __init__(self, endpoint: str, execute: Execute, jobs: JobsSpec,
                 settings: dict[str, Any], tenants: TenantsSpec | None = None) -> None:
        """With batching (``MAX_BATCH_SIZE`` > 1) requests and jobs all go through the
        batcher, which already runs the model on one thread: the gate would only keep
        requests from forming batches, so there is none. ``tenants``: with API keys on,
        where the runs are charged."""
        self.endpoint = endpoint
        self.execute = execute
        self.jobs = jobs
        self.max_attempts = int(settings["MAX_ATTEMPTS"])
        self.backoff = float(settings["RETRY_BACKOFF"])
        self.visibility = float(settings["VISIBILITY_TIMEOUT"])
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        batching = int(settings.get("MAX_BATCH_SIZE") or 1) > 1
        self.gate: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if batching else threading.Lock())
        # Requests being served; the consumer claims a job only when there are none.
        self.in_flight = 0
        self._count = threading.Lock()
        self.idle = threading.Event()
        self.idle.set()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"bis-jobs-{endpoint}", daemon=True)
        self.queue: JobQueue | None = None
        self.results: ResultStore | None = None
        self.ledger = JobLedger(tenants) if tenants is not None and tenants.enabled else None

    # -- the request side ---------------------------------------------------------------
    def guard(self, app: WSGIApp) -> WSGIApp:
        """Wrap the worker's WSGI app: ``/run`` holds the gate while it runs."""

        def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") != "/run":
                return app(environ, start_response)
            with self._count:
                self.in_flight += 1
                self.idle.clear()
            try:
                with self.gate:
                    return app(environ, start_response)
            finally:
                with self._count:
                    self.in_flight -= 1
                    if not self.in_flight:
                        self.idle.set()

        return guarded

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop claiming; a job already running finishes (see :meth:`join`)."""
        self.stopping.set()

    def join(self, timeout: float) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout)

    # -- the consumer thread ------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self.queue = open_queue(self.jobs.queue)
            self.results = open_results(self.jobs.results)
        except Exception:  # noqa: BLE001 - the worker keeps serving HTTP without jobs
            log.exception("%s: cannot open the job queue %s; not consuming jobs",
                          self.endpoint, mask_url(self.jobs.queue))
            return
        log.info("%s: consuming jobs from %s", self.endpoint,
                 mask_url(self.jobs.queue.split("?")[0]))
        try:
            while not self.stopping.is_set():
                try:
                    self.run_once()
                except Exception:  # noqa: BLE001 - a backend hiccup must not end the loop
                    log.exception("%s: job queue error; trying again", self.endpoint)
                    self.stopping.wait(BACKEND_PAUSE)
                if self.ledger is not None:
                    self.ledger.flush()
        finally:
            if self.ledger is not None:
                self.ledger.flush(final=True)
            self.queue.close()
            self.results.close()

    def run_once(self, wait: float = CLAIM_WAIT) -> bool:
        """Claim one job when the worker is idle and run it; False when there was none."""
        assert self.queue is not None
        if not self.idle.wait(wait):
            return False
        claim = self.queue.claim(self.endpoint, self.name, wait, self.visibility)
        if claim is None:
            return False
        with self.gate:
            if self.stopping.is_set():
                self.queue.release(claim)
                return False
            self._run(claim)
        return True

    def _run(self, claim: Claim) -> None:
        assert self.queue is not None and self.results is not None
        job = claim.job
        if job.undecodable is not None:
            self._attempt_failed(claim, f"the queue message cannot be decoded: "
                                        f"{mask_text(job.undecodable[:500])}")
            return
        if job.attempts > self.max_attempts:
            # Claimed again and again without an answer: it kills or hangs its worker.
            error = f"no answer after {job.attempts - 1} runs (its worker died or hung)"
            if job.last_error:
                error += f"; last error: {job.last_error}"
            self._dead(claim, error)
            return
        self.results.update(job.id, {"STATUS": RUNNING, "ATTEMPTS": job.attempts,
                                     "STARTED_AT": time.time(), "WORKER": self.name})
        started = time.perf_counter()
        try:
            status, body, _headers = self.execute(dict(job.body), job.tenant)
            stored = _storable(body)
        except Exception as exc:  # noqa: BLE001 - whatever it is, it is this attempt's error
            log.exception("%s: job %s failed outside the pipeline", self.endpoint, job.id)
            status, stored = 500, {"ERROR": f"{type(exc).__name__}: {exc}"}
        elapsed = time.perf_counter() - started
        # With API keys on, clients never see USAGE: in a result as in an answer.
        units = take_usage(stored) if self.ledger is not None else 0.0
        if status < 500:
            # ATTEMPTS again: a requeue may have reset the record while this ran.
            self.results.update(job.id, {"STATUS": DONE if status < 400 else FAILED,
                                         "HTTP_STATUS": status, "RESULT": stored,
                                         "ATTEMPTS": job.attempts, "FINISHED_AT": time.time()},
                                ttl=self.jobs.ttl)
            self.queue.ack(claim)
            if self.ledger is not None:
                self.ledger.ran(job, status, units, elapsed)
            return
        self._attempt_failed(claim, str(stored.get("ERROR", f"HTTP {status}")), stored, elapsed)

    def _attempt_failed(self, claim: Claim, error: str, body: dict[str, Any] | None = None,
                        elapsed: float = 0.0) -> None:
        """Retry after the backoff, or dead-letter once ``MAX_ATTEMPTS`` runs have failed."""
        assert self.queue is not None and self.results is not None
        job = claim.job
        if job.attempts >= self.max_attempts:
            self._dead(claim, error, body, elapsed)
            return
        delay = retry_delay(self.backoff, job.attempts)
        self.queue.retry_later(claim, delay, error)
        self.results.update(job.id, {"STATUS": QUEUED, "LAST_ERROR": error,
                                     "ATTEMPTS": job.attempts, "RETRY_AT": time.time() + delay})
        log.warning("%s: job %s attempt %d failed (%s); retry in %.1f s", self.endpoint, job.id,
                    job.attempts, error, delay)

    def _dead(self, claim: Claim, error: str, body: dict[str, Any] | None = None,
              elapsed: float = 0.0) -> None:
        assert self.queue is not None and self.results is not None
        self.queue.dead_letter(claim, error)
        fields: dict[str, Any] = {"STATUS": DEAD, "LAST_ERROR": error, "FINISHED_AT": time.time(),
                                  "ATTEMPTS": min(claim.job.attempts, self.max_attempts)}
        if body is not None:
            fields.update(HTTP_STATUS=500, RESULT=body)
        self.results.update(claim.job.id, fields)
        if self.ledger is not None:
            self.ledger.ran(claim.job, 500, 0.0, elapsed)
        log.error("%s: job %s dead after %d attempts: %s", self.endpoint, claim.job.id,
                  claim.job.attempts, error)


# The consumer of this worker process, if any (gunicorn hooks reach it here).
_current: dict[str, JobConsumer] = {}


def start_consumer(worker: Any, endpoint: str, jobs: dict[str, Any] | None,
                   tenants: dict[str, Any] | None = None) -> JobConsumer | None:
    """gunicorn ``post_worker_init``: guard the worker's app and start its consumer."""
    if jobs is None:
        return None
    hooks = worker.wsgi.extensions["bis"]
    consumer = JobConsumer(endpoint, hooks["execute"], JobsSpec(**jobs), hooks["config"],
                           TenantsSpec(**tenants) if tenants else None)
    worker.wsgi = consumer.guard(worker.wsgi)
    consumer.start()
    _current["consumer"] = consumer
    return consumer


def stop_consumer(timeout: float | None = None) -> None:
    """SIGTERM (``timeout`` None: stop claiming) and ``worker_exit`` (wait for the job)."""
    consumer = _current.get("consumer")
    if consumer is None:
        return
    if timeout is None:
        consumer.stop()
    else:
        consumer.join(timeout)
