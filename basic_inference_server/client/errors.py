"""Typed errors of the client, one per ``ERROR_TYPE`` the gateway answers with.

Every error answer of the gateway is JSON with ``ERROR`` (a message) and
``ERROR_TYPE`` (a stable kind). :func:`error_for` turns an answer into the matching
class, so callers catch what they can act on (``QueueFull``, ``Unauthorized`` ...)
rather than parse status codes.
"""

from __future__ import annotations

from typing import Any


class BisError(Exception):
    """An error answer of the gateway, or a failure to reach it."""

    kind = "internal_error"
    # True when the gateway guarantees the request did not run: safe to send again.
    never_ran = False

    def __init__(self, message: str, *, status: int | None = None,
                 body: dict[str, Any] | None = None, retry_after: float | None = None,
                 attempts: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body or {}
        self.retry_after = retry_after
        self.attempts = attempts

    def __str__(self) -> str:
        where = f"HTTP {self.status} " if self.status else ""
        return f"{where}{self.kind}: {self.message}"


class BadRequest(BisError):
    """The request is malformed (400): fix it before sending again."""

    kind = "bad_request"


class Unauthorized(BisError):
    """No valid credential was presented (401)."""

    kind = "unauthorized"


class Forbidden(BisError):
    """The credential may not do this (403)."""

    kind = "forbidden"


class NotFound(BisError):
    """No such endpoint, job or route (404)."""

    kind = "not_found"


class MethodNotAllowed(BisError):
    """The route does not take this HTTP method (405)."""

    kind = "method_not_allowed"


class PayloadTooLarge(BisError):
    """The request body passes MAX_REQUEST_SIZE (413)."""

    kind = "payload_too_large"


class Conflict(BisError):
    """A management action that does not fit the endpoint's state (409)."""

    kind = "conflict"


class QueueFull(BisError):
    """The endpoint's job queue is full (429): the job was not recorded."""

    kind = "queue_full"
    never_ran = True


class ModelsUnavailable(BisError):
    """The models the request needs cannot be loaded now (429): the request never ran."""

    kind = "models_unavailable"
    never_ran = True


class RateLimited(BisError):
    """Over a rate limit: the request never ran; it may be sent again later."""

    kind = "rate_limited"
    never_ran = True


class QuotaExceeded(BisError):
    """Over a quota that will not refill soon: not retried."""

    kind = "quota_exceeded"


class Unavailable(BisError):
    """The endpoint is starting, restarting or down: the request never ran."""

    kind = "unavailable"
    never_ran = True


class Overloaded(BisError):
    """The endpoint has as many requests as it takes (503): the request never ran."""

    kind = "overloaded"
    never_ran = True


class TooManyConnections(BisError):
    """The gateway holds as many connections as it takes (503)."""

    kind = "too_many_connections"
    never_ran = True


class CircuitOpen(BisError):
    """The endpoint's circuit breaker is open (503): the request never ran."""

    kind = "circuit_open"
    never_ran = True


class UpstreamDropped(BisError):
    """The worker died while running the request: it may have run."""

    kind = "upstream_dropped"


class Timeout(BisError):
    """The endpoint did not answer in its TIMEOUT (504); it may still be running."""

    kind = "timeout"


class StreamTimeout(Timeout):
    """A stream passed one of its endpoint's stream timeouts (first chunk, idle, total)."""

    kind = "stream_timeout"


class InvalidStream(BisError):
    """A streaming endpoint sent an event too large to carry, or ended without ``done``."""

    kind = "invalid_stream"


class InternalError(BisError):
    """The gateway or the endpoint failed (500)."""

    kind = "internal_error"


class StepFailed(BisError):
    """A pipeline step failed (``body["STEP"]`` names it); earlier steps may have run."""

    kind = "step_failed"


class ConnectFailed(BisError):
    """The gateway could not be reached: the request was never sent."""

    kind = "connect_failed"
    never_ran = True


class ConnectionLost(BisError):
    """The connection failed after the request was sent: it may have run."""

    kind = "connection_lost"


class JobFailed(BisError):
    """A job ended ``failed`` (the endpoint refused its input) or ``dead`` (out of attempts)."""

    kind = "job_failed"


class JobPending(BisError):
    """``result()`` of a job that has not finished yet."""

    kind = "job_pending"


class WaitTimeout(BisError):
    """``wait()`` gave up before the job finished (the job itself goes on)."""

    kind = "wait_timeout"


ERROR_TYPES: dict[str, type[BisError]] = {
    cls.kind: cls for cls in (
        BadRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed, PayloadTooLarge,
        QueueFull, ModelsUnavailable, RateLimited, QuotaExceeded, Unavailable, Overloaded,
        TooManyConnections, CircuitOpen, UpstreamDropped, Timeout, StreamTimeout, InvalidStream,
        InternalError, StepFailed)
}
# Answers without a known ERROR_TYPE (a proxy's page, an older gateway) go by status.
BY_STATUS: dict[int, type[BisError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 405: MethodNotAllowed,
    409: Conflict, 413: PayloadTooLarge, 504: Timeout,
}


def error_for(status: int | None, body: Any, retry_after: float | None) -> BisError:
    """The typed error of one error answer (or of a stream's ``error`` event: no status)."""
    if not isinstance(body, dict):
        body = {}
    kind = body.get("ERROR_TYPE")
    cls = ERROR_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        cls = BY_STATUS.get(status, InternalError) if status else InternalError
    message = body.get("ERROR") or (f"HTTP {status} without an error message" if status
                                    else "an error event without a message")
    return cls(str(message), status=status, body=body, retry_after=retry_after)
