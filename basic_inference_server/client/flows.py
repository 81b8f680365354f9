"""The client's logic, written once and free of I/O.

Each operation is a generator: it yields the HTTP calls (:class:`Call`) and pauses
(:class:`Sleep`) it needs and receives the answers (:class:`Answer`); transport
failures are thrown into it as :class:`~.errors.BisError`. The sync and async
clients only drive these generators, one with blocking I/O, one with ``await``, so
retries, backoff and job polling behave the same in both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from .errors import BisError, InternalError, JobFailed, JobPending, WaitTimeout, error_for
from .retry import PollPolicy, RetryPolicy

T = TypeVar("T")

DONE, FAILED, DEAD = "done", "failed", "dead"
SHUTDOWN_CMD = "SAFE_KILL_SERVER_CMD"


@dataclass(frozen=True)
class Call:
    """One HTTP request. ``admin``: a management call (the admin token, never the API key).

    ``stream``: ask for Server-Sent Events; a 2xx stream comes back open, as the body.
    """

    method: str
    path: str
    json: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    admin: bool = False
    timeout: float | None = None
    stream: bool = False
    # Sent as Last-Event-ID: a stream of events resumed after that one.
    last_event_id: int | None = None


@dataclass(frozen=True)
class Sleep:
    """A step of a flow: wait this long before the next one."""

    seconds: float


@dataclass(frozen=True)
class Answer:
    """What the driver sends back into a flow for a :class:`Call`."""

    status: int
    body: Any
    headers: Mapping[str, str]


Step = Call | Sleep
Flow = Generator[Step, Any, T]


def retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date), None when absent or bad."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def send(call: Call, retry: RetryPolicy, idempotent: bool = False,
         clock: Callable[[], float] = time.monotonic) -> Flow[Answer]:
    """One call, sent again while the answer says it never ran and the budget lasts."""
    started = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            answer: Answer = yield call
            if answer.status < 400:
                if not (call.stream or isinstance(answer.body, dict)):
                    raise InternalError(f"{call.path} answered {answer.status} without a JSON "
                                        "object", status=answer.status)
                return answer
            error = error_for(answer.status, answer.body, retry_after(answer.headers))
        except BisError as exc:  # thrown in by the driver: the transport failed
            error = exc
        wait = retry.delay(error, attempt, clock() - started, idempotent)
        if wait is None:
            error.attempts = attempt
            raise error
        yield Sleep(wait)


class Flows:
    """Every operation of the client as a flow; the drivers add the I/O."""

    def __init__(self, retry: RetryPolicy, poll: PollPolicy,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.retry = retry
        self.poll = poll
        self.clock = clock

    def body(self, call: Call, idempotent: bool = False,
             retry: RetryPolicy | None = None) -> Flow[dict[str, Any]]:
        """Send ``call`` (retried by the policy) and return its JSON body."""
        answer = yield from send(call, retry or self.retry, idempotent, self.clock)
        body: dict[str, Any] = answer.body
        return body

    # -- data path ---------------------------------------------------------------------
    def run(self, signature: str, payload: Mapping[str, Any] | None, idempotent: bool,
            timeout: float | None, retry: RetryPolicy | None) -> Flow[dict[str, Any]]:
        """``POST /run``: the endpoint's answer."""
        call = Call("POST", "/run", json={**(payload or {}), "SIGNATURE": signature},
                    timeout=timeout)
        return (yield from self.body(call, idempotent, retry))

    def open_stream(self, signature: str, payload: Mapping[str, Any], timeout: float | None,
                    retry: RetryPolicy | None) -> Flow[Answer]:
        """A stream's answer, its events unread; refusals retried as :meth:`run`'s."""
        call = Call("POST", "/run", json={**payload, "SIGNATURE": signature}, timeout=timeout,
                    stream=True)
        return (yield from send(call, retry or self.retry, clock=self.clock))

    def submit(self, signature: str, payload: Mapping[str, Any] | None,
               retry: RetryPolicy | None) -> Flow[str]:
        """``POST /jobs``: the new job's id."""
        # Resending a refused submission is safe: a 429 or 503 recorded no job.
        call = Call("POST", "/jobs", json={**(payload or {}), "SIGNATURE": signature})
        body = yield from self.body(call, retry=retry)
        return str(body["JOB_ID"])

    def status(self, job_id: str) -> Flow[dict[str, Any]]:
        """``GET /jobs/<id>``: the job's record."""
        return (yield from self.body(Call("GET", f"/jobs/{job_id}"), idempotent=True))

    def cancel(self, job_id: str) -> Flow[dict[str, Any]]:
        """``DELETE /jobs/<id>``: cancel the job."""
        # Cancelling twice is the same as once: safe to resend.
        return (yield from self.body(Call("DELETE", f"/jobs/{job_id}"), idempotent=True))

    def open_events(self, job_id: str, after: int) -> Flow[Answer]:
        """A job's event stream, after event ``after``; refusals retried as a read's."""
        call = Call("GET", f"/jobs/{job_id}/events", stream=True, last_event_id=after)
        return (yield from send(call, self.retry, idempotent=True, clock=self.clock))

    @staticmethod
    def outcome(record: dict[str, Any]) -> dict[str, Any]:
        """The answer of a finished job; JobFailed or JobPending otherwise."""
        state = record.get("STATUS")
        if state == DONE:
            result: dict[str, Any] = record.get("RESULT") or {}
            return result
        if state in (FAILED, DEAD):
            raise JobFailed(f"job {record.get('JOB_ID')} is {state}: {record.get('LAST_ERROR')}",
                            status=record.get("HTTP_STATUS"), body=record)
        raise JobPending(f"job {record.get('JOB_ID')} is {state}", body=record)

    def result(self, job_id: str) -> Flow[dict[str, Any]]:
        """The answer of a finished job (JobFailed or JobPending otherwise)."""
        return self.outcome((yield from self.status(job_id)))

    def wait(self, job_id: str, timeout: float | None) -> Flow[dict[str, Any]]:
        """Poll the job until it ends, up to ``timeout`` seconds; its answer."""
        deadline = None if timeout is None else self.clock() + timeout
        delays = self.poll.delays()
        while True:
            record = yield from self.status(job_id)
            if record.get("STATUS") in (DONE, FAILED, DEAD):
                return self.outcome(record)
            delay = next(delays)
            if deadline is not None:
                left = deadline - self.clock()
                if left <= 0:
                    raise WaitTimeout(f"job {job_id} not finished after {timeout:g} s "
                                      f"(it is {record.get('STATUS')})", body=record)
                delay = min(delay, left)
            yield Sleep(delay)

    # -- management ----------------------------------------------------------------------
    def admin(self, method: str, path: str, json: dict[str, Any] | None = None,
              params: dict[str, Any] | None = None,
              idempotent: bool = True) -> Flow[dict[str, Any]]:
        """A management call (admin token), retried when ``idempotent``."""
        call = Call(method, path, json=json, params=params, admin=True)
        return (yield from self.body(call, idempotent))

    def ready(self) -> Flow[bool]:
        """``GET /health/ready``: whether the gateway is ready (503 is "no", not an error)."""
        # 503 is the answer "not ready", not a failure: no retry.
        call = Call("GET", "/health/ready")
        answer = yield call
        return bool(answer.status == 200)

    def shutdown(self) -> Flow[dict[str, Any]]:
        """Stop the gateway (``SAFE_KILL_SERVER_CMD``); never resent."""
        return (yield from self.admin("POST", "/shutdown", {"SIGNATURE": SHUTDOWN_CMD},
                                      idempotent=False))
