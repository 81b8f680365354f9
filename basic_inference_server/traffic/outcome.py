"""The one definition of a failed request, shared by circuit breakers and rollouts.

A request fails when the endpoint answered it with a 5xx, or when it never got an
answer from the endpoint: a timeout, a connection refused, a worker that died on it.
What the caller did wrong (4xx), what the endpoint asked it to slow down for (429) and
what the front refused on its own (its bulkhead's 503 ``overloaded``, an open breaker's
503 ``circuit_open``, a 4xx before forwarding) say nothing about the endpoint's health.
"""

from __future__ import annotations

from enum import Enum

from ..errors import ServingError, UpstreamDropped, UpstreamTimeout


class Origin(Enum):
    """Who produced a request's final status."""

    ENDPOINT = "endpoint"  # the endpoint answered (any status)
    TIMEOUT = "timeout"  # no answer within the endpoint's TIMEOUT
    UNREACHABLE = "unreachable"  # no connection, or an answer that is not HTTP
    DROPPED = "dropped"  # the connection closed unanswered (its worker died)
    FRONT = "front"  # the front answered itself; nothing reached the endpoint


UPSTREAM_FAILURES = frozenset({Origin.TIMEOUT, Origin.UNREACHABLE, Origin.DROPPED})
# ERROR_TYPEs of the 503s the front answers itself, before anything reaches an endpoint.
FRONT_KINDS = frozenset({"overloaded", "circuit_open", "too_many_connections"})


def counts_as_failure(status: int, origin: Origin) -> bool:
    """Whether a request counts against its target's health (breakers, rollouts)."""
    if origin in UPSTREAM_FAILURES:
        return True
    return origin is Origin.ENDPOINT and status >= 500


def origin_of(err: ServingError) -> Origin:
    """The origin of an error raised while forwarding a request to its endpoint.

    Only for errors of the forwarding itself: a timeout, a dropped connection, and
    any other 5xx of the transport (no connection, an invalid answer) is an
    unreachable endpoint; what the front checks before forwarding (4xx, its bulkhead)
    is the front's own.
    """
    if isinstance(err, UpstreamTimeout):
        return Origin.TIMEOUT
    if isinstance(err, UpstreamDropped):
        return Origin.DROPPED
    if err.status >= 500 and err.kind not in FRONT_KINDS:
        return Origin.UNREACHABLE
    return Origin.FRONT

