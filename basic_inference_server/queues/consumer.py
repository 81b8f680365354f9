"""Running the jobs of one endpoint's queue: claim, run, store, ack; retry or dead-letter.

Shared by the endpoint servers' consumers (a thread of each worker process) and the job
runner (jobs of endpoints that have no server of their own). A job's run ends one of
four ways: it answered 200 (result stored as ``done``, acked); it was refused for good
(``failed``, acked, no retry); it failed in a way worth retrying (retried after
``RETRY_BACKOFF`` doubling, up to ``MAX_ATTEMPTS``, then moved to the dead-letter queue
with its last error); or the consumer stopped before starting it (released, not
counted). Results are stored before the ack: a crash in between runs the job again and
overwrites the same result, it never loses it.

Backend connections are per thread (pika's are not thread-safe), so a job is claimed,
run and acked on one thread.

With API keys on, a :class:`Ledger` (:class:`..tenants.ledger.JobLedger`) takes the
units a job reported (``USAGE``) out of its result before it is stored, and charges and
meters each job's last run to its key and tenant.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..redact import mask_text, mask_url
from . import JobQueue, JobsSpec, ResultStore, open_queue, open_results
from .base import DEAD, DONE, FAILED, QUEUED, RUNNING, Claim, Job

log = logging.getLogger(__name__)

# Longest a claim waits for a job; also how long a stop may wait for the claim to return.
CLAIM_WAIT = 1.0
BACKOFF_CAP = 60.0
# Pause after the queue backend failed, before trying it again.
BACKEND_PAUSE = 1.0

# A job -> (HTTP status, its JSON answer); raises NotRun when it could not be started.
Run = Callable[[Job], tuple[int, dict[str, Any]]]


class Ledger(Protocol):
    """Where the jobs' runs are charged (used from the consumer's thread only)."""

    def take_units(self, result: dict[str, Any]) -> float: ...
    def ran(self, job: Job, status: int, units: float, seconds: float,
            requeued: bool = False) -> None: ...
    def flush(self, final: bool = False) -> None: ...


class NotRun(Exception):
    """The job could not be started (what runs it is unreachable): it is given back,
    and the attempt does not count."""


def retry_delay(base: float, attempts: int) -> float:
    """Backoff before the next attempt: ``base``, then doubled per attempt, capped."""
    return float(min(BACKOFF_CAP, base * 2 ** max(0, attempts - 1)))


def server_error(status: int) -> bool:
    """Whether an attempt that answered ``status`` is retried: 5xx (a 4xx is for good)."""
    return status >= 500


@dataclass(frozen=True)
class RetryPolicy:
    """An endpoint's ``MAX_ATTEMPTS``, ``RETRY_BACKOFF`` and ``VISIBILITY_TIMEOUT``."""

    max_attempts: int
    backoff: float
    visibility: float

    @classmethod
    def of(cls, settings: dict[str, Any]) -> RetryPolicy:
        return cls(max_attempts=int(settings["MAX_ATTEMPTS"]),
                   backoff=float(settings["RETRY_BACKOFF"]),
                   visibility=float(settings["VISIBILITY_TIMEOUT"]))


class JobWorker:
    """Claims the jobs of ``endpoint`` and runs each with ``run``, on the calling thread."""

    def __init__(self, endpoint: str, run: Run, jobs: JobsSpec, policy: RetryPolicy, *,
                 retryable: Callable[[int], bool] = server_error,
                 ledger: Ledger | None = None) -> None:
        self.endpoint = endpoint
        self.run = run
        self.jobs = jobs
        self.policy = policy
        self.retryable = retryable
        self.ledger = ledger
        # host:pid, the form the SQLite backend recognises to free a dead consumer's claims.
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.stopping = threading.Event()
        self.queue: JobQueue | None = None
        self.results: ResultStore | None = None

    def serve(self) -> None:
        """Open this thread's backend connections and run jobs until :attr:`stopping`."""
        try:
            self.queue = open_queue(self.jobs.queue)
            self.results = open_results(self.jobs.results)
        except Exception:  # noqa: BLE001 - the process goes on (serving HTTP) without jobs
            log.exception("%s: cannot open the job queue %s; not consuming jobs",
                          self.endpoint, mask_url(self.jobs.queue))
            return
        log.info("%s: consuming jobs from %s", self.endpoint,
                 mask_url(self.jobs.queue.split("?")[0]))
        try:
            while not self.stopping.is_set():
                if self.ledger is not None:
                    self.ledger.flush()  # batched: a write at most every few seconds
                try:
                    self.run_once()
                except Exception:  # noqa: BLE001 - a backend hiccup must not end the loop
                    log.exception("%s: job queue error; trying again", self.endpoint)
                    self.stopping.wait(BACKEND_PAUSE)
        finally:
            self.queue.close()
            self.results.close()
            if self.ledger is not None:
                self.ledger.flush(final=True)

    def claim(self, wait: float) -> Claim | None:
        assert self.queue is not None
        return self.queue.claim(self.endpoint, self.name, wait, self.policy.visibility)

    def run_once(self, wait: float = CLAIM_WAIT) -> bool:
        """Claim one job and run it; False when there was none (or we are stopping)."""
        claim = self.claim(wait)
        if claim is None:
            return False
        if self.stopping.is_set():
            assert self.queue is not None
            self.queue.release(claim)
            return False
        self.process(claim)
        return True

    def process(self, claim: Claim) -> None:
        """Run one claimed job to one of its four ends."""
        assert self.queue is not None and self.results is not None
        job = claim.job
        if job.undecodable is not None:
            self._attempt_failed(claim, f"the queue message cannot be decoded: "
                                        f"{mask_text(job.undecodable[:500])}")
            return
        if job.attempts > self.policy.max_attempts:
            # Claimed again and again without an answer: it kills or hangs its runner.
            error = f"no answer after {job.attempts - 1} runs (its worker died or hung)"
            if job.last_error:
                error += f"; last error: {job.last_error}"
            self._dead(claim, error)
            return
        self.results.update(job.id, {"STATUS": RUNNING, "ATTEMPTS": job.attempts,
                                     "STARTED_AT": time.time(), "WORKER": self.name})
        started = time.perf_counter()
        try:
            status, stored = self.run(job)
        except NotRun as exc:
            log.warning("%s: job %s not started (%s); given back", self.endpoint, job.id, exc)
            self.results.update(job.id, {"STATUS": QUEUED})
            self.queue.release(claim)
            self.stopping.wait(BACKEND_PAUSE)
            return
        except Exception as exc:  # noqa: BLE001 - whatever it is, it is this attempt's error
            log.exception("%s: job %s failed outside the pipeline", self.endpoint, job.id)
            status, stored = 500, {"ERROR": f"{type(exc).__name__}: {exc}"}
        # With API keys on, clients never see USAGE: in a result as in an answer.
        units = self.ledger.take_units(stored) if self.ledger is not None else 0.0
        if not self.retryable(status):
            # ATTEMPTS again: a requeue may have reset the record while this ran.
            self.results.update(job.id, {"STATUS": DONE if status < 400 else FAILED,
                                         "HTTP_STATUS": status, "RESULT": stored,
                                         "ATTEMPTS": job.attempts, "FINISHED_AT": time.time()},
                                ttl=self.jobs.ttl)
            self.queue.ack(claim)
            self.ended(job, status, time.perf_counter() - started, units)
            return
        self._attempt_failed(claim, str(stored.get("ERROR", f"HTTP {status}")), stored, status,
                             time.perf_counter() - started)

    def ended(self, job: Job, status: int, seconds: float, units: float = 0.0) -> None:
        """A job's last run is over (``status``: 500 for a dead letter): charge it."""
        if self.ledger is not None:
            # A dead letter an admin requeued gave back its quota when it died: the
            # ledger must know (one read, for jobs with a key only).
            requeued = job.key_id is not None and self.results is not None \
                and "REQUEUED_AT" in (self.results.get(job.id) or {})
            self.ledger.ran(job, status, units if status == 200 else 0.0, seconds, requeued)

    def _attempt_failed(self, claim: Claim, error: str, body: dict[str, Any] | None = None,
                        status: int = 500, seconds: float = 0.0) -> None:
        """Retry after the backoff, or dead-letter once ``MAX_ATTEMPTS`` runs have failed."""
        assert self.queue is not None and self.results is not None
        job = claim.job
        if job.attempts >= self.policy.max_attempts:
            self._dead(claim, error, body, status, seconds)
            return
        delay = retry_delay(self.policy.backoff, job.attempts)
        self.queue.retry_later(claim, delay, error)
        self.results.update(job.id, {"STATUS": QUEUED, "LAST_ERROR": error,
                                     "ATTEMPTS": job.attempts, "RETRY_AT": time.time() + delay})
        log.warning("%s: job %s attempt %d failed (%s); retry in %.1f s", self.endpoint, job.id,
                    job.attempts, error, delay)

    def _dead(self, claim: Claim, error: str, body: dict[str, Any] | None = None,
              status: int = 500, seconds: float = 0.0) -> None:
        assert self.queue is not None and self.results is not None
        self.queue.dead_letter(claim, error)
        fields: dict[str, Any] = {"STATUS": DEAD, "LAST_ERROR": error, "FINISHED_AT": time.time(),
                                  "ATTEMPTS": min(claim.job.attempts, self.policy.max_attempts)}
        if body is not None:
            fields.update(HTTP_STATUS=status, RESULT=body)
        self.results.update(claim.job.id, fields)
        self.ended(claim.job, 500, seconds)
        log.error("%s: job %s dead after %d attempts: %s", self.endpoint, claim.job.id,
                  claim.job.attempts, error)
