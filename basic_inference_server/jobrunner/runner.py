"""The job runner's loop: which endpoints to serve (the manager says), and their threads.

Every second the runner asks the manager (``job_targets`` on its control socket) which
endpoints' jobs are its own, with their ``MAX_ATTEMPTS``, ``RETRY_BACKOFF``,
``VISIBILITY_TIMEOUT`` and ``TIMEOUT``. Each gets ``threads`` threads (the
``JobRunnerSpec``), each with its own queue connections, claiming and running one job
at a time through the front; an endpoint that goes away has its threads finish the job
in hand and stop. Retries, backoff and dead letters are the servers' own
(:mod:`..queues.consumer`), except that a 429 is retried too: the job is run later, by
then the step or version that asked to come back later may take it. With API keys on,
each job's units (``USAGE``, which the front leaves in its answers to the runner) are
charged to the job's key, and its run is metered for its tenant, as the servers do.

SIGTERM stops claiming; jobs in hand finish within ``stop_timeout``. A job cut off by
the end of the process is claimed again (at once on SQLite, after its visibility
timeout elsewhere).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from ..contracts import JobRunnerSpec
from ..control_api import JOB_TARGETS
from ..ipc import ControlUnavailable, control_call
from ..queues import JobsSpec
from ..queues.base import Job
from ..queues.consumer import JobRun, JobWorker, RetryPolicy
from ..tenants import TenantsSpec
from ..tenants.ledger import JobLedger
from .front import FrontClient

log = logging.getLogger(__name__)

# How often the manager is asked which endpoints to serve.
REFRESH = 1.0

Targets = Callable[[], "dict[str, dict[str, Any]] | None"]


def worth_retrying(status: int) -> bool:
    """5xx, and 429: the job runs again later (a 4xx other than 429 is for good)."""
    return status >= 500 or status == 429


class EndpointJobs(JobWorker):
    """One thread's share of an endpoint's jobs, each run through the front."""

    def __init__(self, name: str, target: dict[str, Any], spec: JobRunnerSpec,
                 jobs: JobsSpec) -> None:
        super().__init__(name, self._through_front, jobs, RetryPolicy.of(target),
                         retryable=worth_retrying, ledger=JobLedger.of(
                             TenantsSpec(**spec.tenants) if spec.tenants else None))
        self.timeout = float(target["TIMEOUT"])
        self.front = FrontClient(spec.front_url, spec.credential)
        self.thread = threading.Thread(target=self._serve, name=f"bis-jobs-{name}", daemon=True)

    def update(self, target: dict[str, Any]) -> None:
        """New settings of the endpoint apply from its next job."""
        self.policy = RetryPolicy.of(target)
        self.timeout = float(target["TIMEOUT"])

    def _serve(self) -> None:
        try:
            self.serve()
        finally:
            self.front.close()

    def _through_front(self, job: Job, flag: JobRun) -> tuple[int, dict[str, Any]]:
        """Run the job through ``/run``. Cancelled while it runs (the consumer's watcher
        sets its flag), the call is cut short: its connection to the front is closed,
        which stops the work as a caller that leaves does."""
        assert self.results is not None
        tenant = (self.results.get(job.id) or {}).get("TENANT")
        return self.front.run(job, tenant if isinstance(tenant, str) else None, self.timeout,
                              cancelled=lambda: flag.is_set)


class JobRunner:
    """Serves the jobs of the endpoints the manager names, until SIGTERM."""

    def __init__(self, spec: JobRunnerSpec, *, targets: Targets | None = None) -> None:
        self.spec = spec
        self.jobs = JobsSpec(**spec.jobs)
        self.targets: Targets = targets or self._ask_manager
        self.endpoints: dict[str, list[EndpointJobs]] = {}
        # Threads of endpoints that went away, still finishing their job.
        self.retired: list[EndpointJobs] = []
        self.stopping = threading.Event()

    def _ask_manager(self) -> dict[str, dict[str, Any]] | None:
        try:
            reply = control_call(self.spec.control, JOB_TARGETS.request({}), timeout=5.0)
        except ControlUnavailable as exc:
            log.warning("manager not answering job_targets: %s", exc)
            return None
        if reply.get("status") != 200:
            log.warning("manager refused job_targets: %s", reply.get("body"))
            return None
        endpoints: dict[str, dict[str, Any]] = reply["body"]["endpoints"]
        return endpoints

    def run(self) -> None:
        """Serve until SIGTERM, then let the jobs in hand finish (``stop_timeout``)."""
        signal.signal(signal.SIGTERM, lambda _s, _f: self.stopping.set())
        log.info("job runner started: %d thread(s) per endpoint, front %s", self.spec.threads,
                 self.spec.front_url)
        while not self.stopping.is_set():
            self.refresh()
            self.stopping.wait(REFRESH)
        self.stop(self.spec.stop_timeout)

    def refresh(self) -> None:
        """Start threads for new endpoints, retire those of endpoints gone, update the rest."""
        targets = self.targets()
        if targets is None:
            return
        self.retired = [w for w in self.retired if w.thread.is_alive()]
        for name in [n for n in self.endpoints if n not in targets]:
            log.info("%s: no longer running its jobs", name)
            for worker in self.endpoints.pop(name):
                worker.stopping.set()
                self.retired.append(worker)
        for name, target in targets.items():
            workers = self.endpoints.get(name)
            if workers is not None:
                for worker in workers:
                    worker.update(target)
                continue
            workers = [EndpointJobs(name, target, self.spec, self.jobs)
                       for _ in range(self.spec.threads)]
            self.endpoints[name] = workers
            for worker in workers:
                worker.thread.start()

    def stop(self, timeout: float) -> None:
        """Stop claiming; wait up to ``timeout`` seconds for the jobs in hand."""
        workers = [w for ws in self.endpoints.values() for w in ws] + self.retired
        for worker in workers:
            worker.stopping.set()
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.thread.join(max(0.0, deadline - time.monotonic()))
        left = sum(w.thread.is_alive() for w in workers)
        if left:
            log.warning("job runner stopping with %d job(s) unfinished; they will run again",
                        left)
