"""Error hierarchy. Each error knows its HTTP status; one handler maps them to JSON.

Errors cross process boundaries as dicts (:meth:`ServingError.to_dict`).
"""

from __future__ import annotations

from typing import Any


class ServingError(Exception):
    """Base of every error the framework turns into an HTTP answer."""

    status = 500
    kind = "internal_error"

    def __init__(self, message: str, *, retry_after: float | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """JSON body of the error: ``ERROR`` is the human message, always present."""
        body: dict[str, Any] = {"ERROR": self.message, "ERROR_TYPE": self.kind}
        body.update(self.details)
        return body

    def headers(self) -> list[tuple[str, str]]:
        """Extra response headers (``Retry-After`` when the caller should come back)."""
        if self.retry_after is None:
            return []
        return [("Retry-After", str(max(1, round(self.retry_after))))]


class BadRequest(ServingError):
    """The request body or its fields are wrong: the caller's fault."""

    status = 400
    kind = "bad_request"


class Unauthorized(ServingError):
    """A call without an acceptable credential (the admin token, an API key, the scrape token)."""

    status = 401
    kind = "unauthorized"

    def headers(self) -> list[tuple[str, str]]:
        """With ``WWW-Authenticate``: the scheme to use."""
        # RFC 6750: a 401 names the scheme the caller must use.
        return [*super().headers(), ("WWW-Authenticate", 'Bearer realm="management"')]


class Forbidden(ServingError):
    """A request its credential does not cover (a key's endpoints), or a Host not in ``ALLOWED_HOSTS``."""

    status = 403
    kind = "forbidden"


class NotFound(ServingError):
    """Unknown endpoint (``SIGNATURE``) or path."""

    status = 404
    kind = "not_found"


class MethodNotAllowed(ServingError):
    """A method the path does not take; ``allow`` names those it does (RFC 9110: ``Allow``)."""

    status = 405
    kind = "method_not_allowed"

    def __init__(self, message: str, *, allow: tuple[str, ...] | list[str] = (),
                 **details: Any) -> None:
        super().__init__(message, **details)
        self.allow = list(allow)

    def headers(self) -> list[tuple[str, str]]:
        """With ``Allow``: the methods the route takes."""
        return [*super().headers(), ("Allow", ", ".join(self.allow))]


class Conflict(ServingError):
    """The command does not fit the endpoint's current state (reloading, not READY...)."""

    status = 409
    kind = "conflict"


class PayloadTooLarge(ServingError):
    """The body is over ``MAX_REQUEST_SIZE``, or holds more than ``MAX_JSON_ELEMENTS`` values."""

    status = 413
    kind = "payload_too_large"


class UnsupportedMediaType(ServingError):
    """A management POST whose body is not declared ``application/json``."""

    status = 415
    kind = "unsupported_media_type"


class TooManyRequests(ServingError):
    """Too many calls for the caller's limit (a key's rate, the manager's status reports):
    come back later."""

    status = 429
    kind = "rate_limited"


class QueueFull(ServingError):
    """The endpoint's job queue holds ``MAX_QUEUE_DEPTH`` jobs: come back later."""

    status = 429
    kind = "queue_full"


class ModelsUnavailable(ServingError):
    """Models a request needs cannot be loaded now (no room on the device): come back later.

    The body carries the model manager's fields (``error``, ``unavailable_models``,
    ``message``) beside the usual ``ERROR``.
    """

    status = 429
    kind = "models_unavailable"

    def __init__(self, models: list[str], reason: str, retry_after: float = 5) -> None:
        super().__init__(f"models unavailable: {', '.join(models)} ({reason})",
                         retry_after=retry_after)
        self.models = list(models)

    def to_dict(self) -> dict[str, Any]:
        """The body, with the model manager's fields (``unavailable_models`` ...)."""
        return {**super().to_dict(), "error": "Required models unavailable",
                "unavailable_models": self.models,
                "message": "The server is currently unable to handle the request due to a "
                           "temporary overloading or maintenance of the server."}


class Unavailable(ServingError):
    """The endpoint is starting, restarting, failed or stopped."""

    status = 503
    kind = "unavailable"


class Overloaded(Unavailable):
    """The endpoint holds its ``MAX_IN_FLIGHT`` requests: this one never ran."""

    kind = "overloaded"


class CircuitOpen(Unavailable):
    """The target's circuit breaker is open: the request never reached it."""

    kind = "circuit_open"


class TooManyConnections(Unavailable):
    """The gateway holds its ``MAX_CONNECTIONS`` open connections: the request never ran."""

    kind = "too_many_connections"


class UpstreamDropped(Unavailable):
    """The worker died while running the request: it may have run."""

    kind = "upstream_dropped"


class UpstreamTimeout(ServingError):
    """The endpoint did not answer within its ``TIMEOUT``."""

    status = 504
    kind = "timeout"


class DeadlineExceeded(UpstreamTimeout):
    """The request's ``X-Request-Deadline`` passed: at the gateway before it was sent or
    while its answer was awaited, or in the endpoint server before ``_predict`` started
    (it never starts)."""

    kind = "deadline_exceeded"


class StreamTimeout(UpstreamTimeout):
    """A stream passed one of its endpoint's stream timeouts (``STREAM_FIRST_CHUNK_TIMEOUT``,
    ``STREAM_IDLE_TIMEOUT``, ``STREAM_TIMEOUT``): the ``ERROR_TYPE`` of its last event,
    an ``error`` event, after which the front closes the endpoint's connection."""

    kind = "stream_timeout"


class StreamInvalid(ServingError):
    """A streaming endpoint sent an event larger than the front carries (1 MiB), or ended
    its stream without a ``done`` or ``error`` event: the ``ERROR_TYPE`` of the stream's
    last event."""

    status = 502
    kind = "invalid_stream"


class StepFailed(ServingError):
    """A pipeline step failed; the answer names the step (``STEP``). The status follows
    the step's (see :func:`..traffic.pipeline.failure_status`): 502 Bad Gateway unless
    the step's own status says more."""

    status = 502
    kind = "step_failed"

    def __init__(self, message: str, *, status: int, retry_after: float | None = None,
                 **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.status = status


# The kind of each status's own class: the ERROR_TYPE of an error that arrives without one
# (the manager's answers, werkzeug's own HTTP errors).
_KIND_BY_STATUS = {cls.status: cls.kind for cls in (
    BadRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed, Conflict,
    PayloadTooLarge, UnsupportedMediaType, TooManyRequests, Unavailable, UpstreamTimeout)}


def kind_for_status(status: int) -> str:
    """``ERROR_TYPE`` for an HTTP error status (``bad_request`` or ``internal_error`` if unknown)."""
    return _KIND_BY_STATUS.get(status) or ("bad_request" if 400 <= status < 500 else "internal_error")


class ConfigError(Exception):
    """The gateway configuration is invalid; the message says where and how to fix it."""


class DiscoveryError(Exception):
    """An endpoint file does not define exactly one usable worker class."""
