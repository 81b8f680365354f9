"""Running the jobs of one endpoint's queue: claim, run, store, ack; retry or dead-letter.

Shared by the endpoint servers' consumers (a thread of each worker process) and the job
runner (jobs of endpoints that have no server of their own). A job's run ends one of
four ways: it answered 200 (result stored as ``done``, acked); it was refused for good
(``failed``, acked, no retry); it failed in a way worth retrying (retried after
``RETRY_BACKOFF`` doubling, up to ``MAX_ATTEMPTS``, then moved to the dead-letter queue
with its last error); or the consumer stopped before starting it (released, not
counted). Results are stored before the ack: a crash in between runs the job again and
overwrites the same result, it never loses it.

Cancelled jobs (``DELETE /jobs/<id>``): a job whose record says it was cancelled before
it started is moved to the dead letters unrun. While a job runs, a watcher thread reads
its record every :data:`CANCEL_POLL` seconds; once it is cancelled the job's flag is
set (:meth:`FlaskWorker.cancelled` turns true, a streaming endpoint's generator is
closed after the chunk in the making; the job runner closes its call to the front) and
the job ends ``cancelled``, its answer dropped, counted in ``bis_cancelled_total``
(``job_running``; the front counts the ``job_waiting`` ones).

Each step is also an event of the job (``GET /jobs/<id>/events``), stored in the
results store: ``queued`` (a retry), ``running``, ``progress`` and ``chunk`` while it
runs (see :class:`JobRun`), and its end, stored before its record says so.

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

import orjson

from ..cancellations import JOB_RUNNING, count_cancelled
from ..deadlines import MISSES
from ..redact import mask_text, mask_url
from ..worker import CancelFlag
from . import JobQueue, JobsSpec, ResultStore, open_queue, open_results
from .base import (
    CANCELLED,
    CANCELLED_ERROR,
    DEAD,
    DONE,
    END_EVENT,
    FAILED,
    QUEUED,
    RUNNING,
    Claim,
    Job,
)

log = logging.getLogger(__name__)

# Longest a claim waits for a job; also how long a stop may wait for the claim to return.
CLAIM_WAIT = 1.0
BACKOFF_CAP = 60.0
# Pause after the queue backend failed, before trying it again.
BACKEND_PAUSE = 1.0

# How often the record of a running job is read to see whether it was cancelled.
CANCEL_POLL = 0.25
# The largest ``progress`` event a worker may report, in bytes of JSON.
MAX_PROGRESS = 64 * 1024
# An event's name and data -> its id (0: not stored).
Emit = Callable[[str, dict[str, Any]], int]


class JobRun(CancelFlag):
    """The flag of a running job (set once it is cancelled: :meth:`FlaskWorker.cancelled`)
    and where its ``progress`` and ``chunk`` events go."""

    __slots__ = ("emit",)

    def __init__(self, emit: Emit) -> None:
        super().__init__()
        self.emit = emit

    def progress(self, data: dict[str, Any]) -> None:
        """A ``progress`` event (:meth:`FlaskWorker.progress`)."""
        if not isinstance(data, dict):
            raise TypeError(f"progress takes a dict, not {type(data).__name__}")
        if len(orjson.dumps(data, default=str)) > MAX_PROGRESS:
            raise ValueError(f"a progress event is at most {MAX_PROGRESS} bytes of JSON")
        self.emit("progress", data)

    def chunk(self, data: dict[str, Any]) -> None:
        """A ``chunk`` event: one chunk of a streaming endpoint's job."""
        self.emit("chunk", data)


# A job and its flag -> (HTTP status, its JSON answer); raises NotRun when it could not
# be started.
Run = Callable[[Job, JobRun], tuple[int, dict[str, Any]]]


def cancel_asked(record: dict[str, Any] | None) -> bool:
    """Whether a job's record says it was cancelled (``DELETE /jobs/<id>``)."""
    return record is not None and (record.get("STATUS") == CANCELLED
                                   or bool(record.get("CANCEL_REQUESTED")))


class CancelWatch:
    """A thread that reads the record of the job running now every :data:`CANCEL_POLL`
    seconds, and sets its flag once it was cancelled; idle while no job runs."""

    def __init__(self, results_url: str, endpoint: str) -> None:
        self.url = results_url
        self.current: tuple[str, JobRun] | None = None
        self.wake = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, name=f"bis-cancel-{endpoint}",
                                       daemon=True)
        self.thread.start()

    def watch(self, job_id: str, flag: JobRun) -> None:
        """Watch job ``job_id``'s cancellation while ``flag``'s run lasts."""
        self.current = (job_id, flag)
        self.wake.set()

    def unwatch(self) -> None:
        """Stop watching: the job's run is over."""
        self.current = None

    def stop(self) -> None:
        """Stop the watcher thread."""
        self.done.set()
        self.wake.set()

    def _serve(self) -> None:
        results = open_results(self.url)  # its own connections: they are per thread
        try:
            while not self.done.is_set():
                current = self.current
                if current is None:
                    self.wake.wait(CLAIM_WAIT)
                    self.wake.clear()
                    continue
                self._check(results, *current)
                self.done.wait(CANCEL_POLL)
        finally:
            results.close()

    def _check(self, results: ResultStore, job_id: str, flag: JobRun) -> None:
        try:
            if cancel_asked(results.get(job_id)):
                flag.set()
        except Exception as exc:  # noqa: BLE001 - the store may be back at the next poll
            log.warning("cannot read job %s to see whether it was cancelled: %s", job_id, exc)


class Ledger(Protocol):
    """Where the jobs' runs are charged (used from the consumer's thread only)."""

    def take_units(self, result: dict[str, Any]) -> float:
        """The units a job's answer is charged (its ``usage``)."""

    def ran(self, job: Job, status: int, units: float, seconds: float,
            requeued: bool = False) -> None:
        """Charge one run of ``job``; ``requeued``: it is given back to run again."""

    def flush(self, final: bool = False) -> None:
        """Write what was counted; ``final`` at the consumer's stop."""


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
        """The policy an endpoint's settings give."""
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
        self.watch: CancelWatch | None = None

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
        self.watch = CancelWatch(self.jobs.results, self.endpoint)
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
            self.watch.stop()
            self.queue.close()
            self.results.close()
            if self.ledger is not None:
                self.ledger.flush(final=True)

    def claim(self, wait: float) -> Claim | None:
        """The next job of this endpoint, waiting up to ``wait`` seconds."""
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
        """Run one claimed job to one of its ends."""
        assert self.queue is not None and self.results is not None
        job = claim.job
        if self._not_to_run(claim):
            return
        if self.results.update(job.id, {"STATUS": RUNNING, "ATTEMPTS": job.attempts,
                                        "STARTED_AT": time.time(), "WORKER": self.name}):
            self.event(job.id, RUNNING, {"ATTEMPTS": job.attempts, "WORKER": self.name})
        elif cancel_asked(self.results.get(job.id)):  # cancelled since the look above
            self._cancelled(claim, ran=False)
            return
        flag = JobRun(lambda name, data: self.event(job.id, name, data, quiet=True))
        started = time.perf_counter()
        try:
            status, stored = self._run_watched(job, flag)
        except NotRun as exc:
            log.warning("%s: job %s not started (%s); given back", self.endpoint, job.id, exc)
            self.results.update(job.id, {"STATUS": QUEUED})
            self.event(job.id, QUEUED, {"ATTEMPTS": job.attempts - 1})
            self.queue.release(claim)
            self.stopping.wait(BACKEND_PAUSE)
            return
        # With API keys on, clients never see USAGE: in a result as in an answer.
        units = self.ledger.take_units(stored) if self.ledger is not None else 0.0
        seconds = time.perf_counter() - started
        if flag.is_set:
            self._cancelled(claim, ran=True, seconds=seconds)
        elif not self.retryable(status):
            self._finished(claim, status, stored, seconds, units)
        else:
            self._attempt_failed(claim, str(stored.get("ERROR", f"HTTP {status}")), stored,
                                 status, seconds)

    def _not_to_run(self, claim: Claim) -> bool:
        """End a job that must not run (undecodable, hanging its runners, cancelled)."""
        job = claim.job
        if job.undecodable is not None:
            self._attempt_failed(claim, f"the queue message cannot be decoded: "
                                        f"{mask_text(job.undecodable[:500])}")
            return True
        if job.attempts > self.policy.max_attempts:
            # Claimed again and again without an answer: it kills or hangs its runner.
            error = f"no answer after {job.attempts - 1} runs (its worker died or hung)"
            if job.last_error:
                error += f"; last error: {job.last_error}"
            self._dead(claim, error)
            return True
        assert self.results is not None
        if cancel_asked(self.results.get(job.id)):
            self._cancelled(claim, ran=False)
            return True
        if job.expires_at is not None and time.time() >= job.expires_at:
            MISSES.labels(self.endpoint, "queue").inc()
            self._dead(claim, "expired: its X-Request-Deadline passed before it started")
            return True
        return False

    def _finished(self, claim: Claim, status: int, stored: dict[str, Any], seconds: float,
                  units: float) -> None:
        """The job ended for good (done, or failed without retry): store it, ack it."""
        assert self.queue is not None and self.results is not None
        job = claim.job
        ended = DONE if status < 400 else FAILED
        self.event(job.id, END_EVENT[ended], {"STATUS": ended, "HTTP_STATUS": status,
                                              "RESULT": stored})
        # ATTEMPTS again: a requeue may have reset the record while this ran.
        self.results.update(job.id, {"STATUS": ended, "HTTP_STATUS": status, "RESULT": stored,
                                     "ATTEMPTS": job.attempts, "FINISHED_AT": time.time()},
                            ttl=self.jobs.ttl)
        self.queue.ack(claim)
        self.ended(job, status, seconds, units)

    def _run_watched(self, job: Job, flag: JobRun) -> tuple[int, dict[str, Any]]:
        """Run the job while the watcher looks for its cancellation."""
        if self.watch is not None:
            self.watch.watch(job.id, flag)
        try:
            return self.run(job, flag)
        except NotRun:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever it is, it is this attempt's error
            log.exception("%s: job %s failed outside the pipeline", self.endpoint, job.id)
            return 500, {"ERROR": f"{type(exc).__name__}: {exc}"}
        finally:
            if self.watch is not None:
                self.watch.unwatch()

    def event(self, job_id: str, name: str, data: dict[str, Any], quiet: bool = False) -> int:
        """Store one event of the job; its id (0: not stored). ``quiet``: a failing store
        is logged, not raised (a worker's progress report must not fail its job)."""
        assert self.results is not None
        try:
            return self.results.add_event(job_id, name, data, self.jobs.ttl)
        except Exception as exc:  # noqa: BLE001 - see quiet
            if not quiet:
                raise
            log.warning("%s: job %s: cannot store its %s event: %s", self.endpoint, job_id,
                        name, exc)
            return 0

    def _cancelled(self, claim: Claim, ran: bool, seconds: float = 0.0) -> None:
        """End a cancelled job: stopped while it ran (acked), or never run (a dead letter)."""
        assert self.queue is not None and self.results is not None
        job = claim.job
        self.event(job.id, CANCELLED, {"STATUS": CANCELLED, "RAN": ran})
        self.results.update(job.id, {"STATUS": CANCELLED, "FINISHED_AT": time.time()},
                            ttl=self.jobs.ttl)
        if ran:
            self.queue.ack(claim)
            count_cancelled(self.endpoint, JOB_RUNNING)
            self.ended(job, 499, seconds)
        else:
            self.queue.dead_letter(claim, CANCELLED_ERROR)
        log.info("%s: job %s cancelled (%s)", self.endpoint, job.id,
                 "stopped while it ran" if ran else "never run")

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
        retry = {"LAST_ERROR": error, "ATTEMPTS": job.attempts, "RETRY_AT": time.time() + delay}
        if self.results.update(job.id, {"STATUS": QUEUED, **retry}):
            self.event(job.id, QUEUED, retry)
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
        self.event(claim.job.id, END_EVENT[DEAD], {k: v for k, v in fields.items()
                                                   if k != "FINISHED_AT"})
        self.results.update(claim.job.id, fields)
        self.ended(claim.job, 500, seconds)
        log.error("%s: job %s dead after %d attempts: %s", self.endpoint, claim.job.id,
                  claim.job.attempts, error)
