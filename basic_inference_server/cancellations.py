"""``bis_cancelled_total``: work stopped before its end, by endpoint and reason.

Counted where the stop is seen: the front counts the ``/run`` calls whose caller left and
the streams its timeouts cut (``gateway/metrics.py``) and the jobs cancelled while they
waited (``DELETE /jobs/<id>``); the job consumers (endpoint servers, job runner) count
the jobs stopped while they ran. Every process writes to its multiprocess metrics
folder, merged at scrape time. The ``endpoint`` label is always a configured endpoint's
name (a route the front resolved, an endpoint a consumer serves, a job's recorded
endpoint): never a name a caller made up; a version's work counts under its endpoint
(``clf@v2`` as ``clf``), as the stream metrics do.
"""

from __future__ import annotations

from prometheus_client import Counter

from .names import split_target

# A /run (streamed or not) whose caller closed its connection before the answer ended;
# also a pipeline's step the front stopped because another step failed.
CLIENT_GONE = "client_gone"
# A stream cut by STREAM_FIRST_CHUNK_TIMEOUT, STREAM_IDLE_TIMEOUT or STREAM_TIMEOUT.
TIMEOUT = "timeout"
# A job cancelled while it waited in its queue: it never ran.
JOB_WAITING = "job_waiting"
# A job cancelled while it ran: stopped, its answer dropped.
JOB_RUNNING = "job_running"
REASONS = (CLIENT_GONE, TIMEOUT, JOB_WAITING, JOB_RUNNING)

CANCELLED = Counter("bis_cancelled_total", "Work stopped before its end, by endpoint and reason "
                    f"({', '.join(REASONS)})", ["endpoint", "reason"])


def count_cancelled(target: str, reason: str) -> None:
    """One piece of work of ``target`` (a configured endpoint, or one of its versions)
    stopped for ``reason``."""
    if reason not in REASONS:
        raise ValueError(f"unknown cancel reason {reason!r}")
    CANCELLED.labels(split_target(target)[0], reason).inc()
