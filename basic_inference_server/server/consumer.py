"""The job consumer of one endpoint worker process: pulls async jobs while the worker is idle.

Each gunicorn worker serves HTTP on one thread; the consumer is a second thread in the
same process. Both run the user's code only under one lock (the *gate*), so the model
never sees two calls at once. The consumer claims a job only when no request is being
served, and a request that arrives while a job runs waits for it, like a request
behind another request. A stream counts as a request being served until it is closed;
the gate is held while each of its chunks is made, so a job claimed as it began runs
between two of its chunks. No dispatcher pushes work: every worker of every server,
on this box or another, pulls from the endpoint's queue when it is free.

How a job ends (stored, retried, dead-lettered) is the queues' shared consumer's
(:mod:`..queues.consumer`); a 4xx is for good, a 5xx is retried.

A job runs with its tenant as the customer id (``X-Customer-ID`` of a request), so
``CUSTOMER_MODELS`` serve jobs as they serve requests. With API keys on, the consumer
takes ``USAGE`` out of the stored result and charges the run to the job's key (see
:mod:`..tenants.ledger`) once the job is done, failed or dead.

A job runs with a :class:`..queues.consumer.JobRun` as its request's cancel flag: a
cancelled job's ``_predict`` sees :meth:`FlaskWorker.cancelled` turn true, a streaming
endpoint's generator is closed after the chunk in the making, and ``self.progress()``
reports its progress.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import threading
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from ..queues import Job, JobsSpec
from ..queues.consumer import CLAIM_WAIT, JobRun, JobWorker, RetryPolicy
from ..tenants import TenantsSpec
from ..tenants.ledger import JobLedger
from ..wire.message import Streamed
from ..worker import CancelFlag, FileOutput
from .entry import Outcome

# inputs, customer id, request id (the job's, as the job runner names it), the job's
# flag (cancelled, progress) and what takes each chunk of a streaming endpoint
Execute = Callable[[dict[str, Any], str | None, str | None, CancelFlag | None,
                    Callable[[dict[str, Any]], None] | None], Outcome]


def _storable(body: dict[str, Any] | FileOutput) -> dict[str, Any]:
    """A job result must be JSON: a file answer is stored base64-encoded."""
    if not isinstance(body, FileOutput):
        return body
    data = body.data if body.data is not None else Path(str(body.path)).read_bytes()
    return {"FILE": {"filename": body.filename, "mimetype": body.mimetype,
                     "base64": base64.b64encode(data).decode("ascii")}}


class JobConsumer(JobWorker):
    """Pulls the jobs of ``endpoint`` and runs them with ``execute`` while the worker is idle."""

    def __init__(self, endpoint: str, execute: Execute, jobs: JobsSpec,
                 settings: dict[str, Any], tenants: TenantsSpec | None = None,
                 concurrent: bool = False) -> None:
        """With batching (``MAX_BATCH_SIZE`` > 1), or a generative endpoint's decode loop
        (``concurrent``: the strategy takes requests at once), requests and jobs all go
        through what already runs the model on one thread: the gate would only keep
        requests from joining it, so there is none. ``tenants``: with API keys on, where
        the runs are charged."""
        super().__init__(endpoint, self._execute, jobs, RetryPolicy.of(settings),
                         ledger=JobLedger.of(tenants))
        self.execute = execute
        # The entry's traced_job with TRACING on: runs a job inside its trace.
        self.traced: Callable[[Job, Callable[[], Outcome]], Outcome] | None = None
        shared = concurrent or int(settings.get("MAX_BATCH_SIZE") or 1) > 1
        self.gate: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if shared else threading.Lock())
        # Requests being served; the consumer claims a job only when there are none.
        self.in_flight = 0
        self._count = threading.Lock()
        self.idle = threading.Event()
        self.idle.set()
        self.thread = threading.Thread(target=self.serve, name=f"bis-jobs-{endpoint}",
                                       daemon=True)

    def _execute(self, job: Job, flag: JobRun) -> tuple[int, dict[str, Any]]:
        """Run a job as its flag's request: a streaming endpoint's chunks are each a
        ``chunk`` event as they come, then gathered into its result."""
        run = functools.partial(self.execute, dict(job.body), job.tenant, f"job-{job.id}",
                                flag, flag.chunk)
        status, answer, _headers = run() if self.traced is None else self.traced(job, run)
        return status, _storable(answer)

    # -- the request side ---------------------------------------------------------------
    def guard(self, run: Callable[[], Any]) -> Any:
        """Run a ``/run`` request (``run``) holding the gate. A :class:`Streamed` answer
        counts as in flight until it is closed, and holds the gate while each of its
        chunks is made."""
        self._enter()
        try:
            with self.gate:
                result = run()
        except BaseException:
            self._leave()
            raise
        if isinstance(result, Streamed):
            return self._gated(result)
        self._leave()
        return result

    def _enter(self) -> None:
        with self._count:
            self.in_flight += 1
            self.idle.clear()

    def _leave(self) -> None:
        with self._count:
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()

    def _gated(self, streamed: Streamed) -> Streamed:
        def chunks() -> Generator[bytes, None, None]:
            while True:
                with self.gate:
                    chunk = next(streamed.chunks, None)
                if chunk is None:
                    return
                yield chunk

        gated = chunks()

        def close() -> None:
            gated.close()
            try:
                with self.gate:
                    streamed.close()
            finally:
                self._leave()

        return Streamed(gated, cancel=streamed.cancel, close=close)

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        """Start consuming jobs in a thread of its own."""
        self.thread.start()

    def stop(self) -> None:
        """Stop claiming; a job already running finishes (see :meth:`join`)."""
        self.stopping.set()

    def join(self, timeout: float) -> None:
        """Stop consuming; wait up to ``timeout`` seconds for the job in hand."""
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout)

    # -- the consumer thread ------------------------------------------------------------
    def run_once(self, wait: float = CLAIM_WAIT) -> bool:
        """Claim one job when the worker is idle and run it; False when there was none."""
        assert self.queue is not None
        if not self.idle.wait(wait):
            return False
        claim = self.claim(wait)
        if claim is None:
            return False
        with self.gate:
            if self.stopping.is_set():
                self.queue.release(claim)
                return False
            self.process(claim)
        return True


# The consumer of this worker process, if any (gunicorn hooks reach it here).
_current: dict[str, JobConsumer] = {}


def start_consumer(execute: Execute, settings: dict[str, Any], endpoint: str,
                   jobs: dict[str, Any] | None, tenants: dict[str, Any] | None = None,
                   concurrent: bool = False,
                   traced: Callable[[Job, Callable[[], Outcome]], Outcome] | None = None
                   ) -> JobConsumer | None:
    """gunicorn ``post_worker_init``: start the worker's consumer (the caller runs its
    ``/run`` requests through :meth:`JobConsumer.guard`); ``concurrent``: the worker's
    strategy takes several requests at once (see :class:`JobConsumer`)."""
    if jobs is None:
        return None
    consumer = JobConsumer(endpoint, execute, JobsSpec(**jobs), settings,
                           TenantsSpec(**tenants) if tenants else None, concurrent)
    consumer.traced = traced
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
