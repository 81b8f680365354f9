"""What a ``/run`` will do, decided from the request and the route table alone (no I/O).

:func:`plan_run` names the route a request goes to (a pinned version as named, else
the version its endpoint's traffic policy picks: sticky by the body's
``STICKY_FIELD``, the caller's tenant or ``X-Customer-ID``, avoiding versions whose
breaker is open), the labels it is counted under and whether its endpoint's shadow
may get a copy. :mod:`.run_flow` carries the plan out. What the plan leaves to others:
whether the answer streams (the endpoint's choice, from the caller's ``Accept`` and
``STREAM`` that the front passes on; a pipeline's, see :mod:`.pipelines`) and whether
a breaker refuses (its state changes as requests end: :mod:`.dispatch` asks it).
"""

from __future__ import annotations

from typing import NamedTuple

from .. import protocol, streams
from ..contracts import RouteSnapshot, TrafficPolicy
from ..names import VERSION_SEP, split_target
from ..traffic.router import Allowed, choose
from ..wire.message import Request

# The one label of requests for an endpoint or version the route table does not know.
UNKNOWN = "unknown"
# The label of a request whose SIGNATURE was not read.
NO_LABEL = "-"
# Values of a request's ASYNC field that make it a job (a query string carries text).
ASYNC_TRUE = (True, "true", "True", "1")


class RunPlan(NamedTuple):
    """Where one request goes and how it is counted (a tuple: made on every request,
    and cheaper to make than a frozen dataclass)."""

    label: str  # the endpoint, without a version
    target: str  # the route it is sent to: the endpoint, or ``<endpoint>@<version>``
    version: str | None  # the version of ``target``
    shadow: TrafficPolicy | None = None  # the endpoint's policy when it has a shadow


def is_async(raw: bytes) -> bool:
    """Whether a ``/run`` body asks to become a job (``"ASYNC": true``)."""
    if b'"ASYNC"' not in raw:
        return False
    found, flag = protocol.peek_field(raw, "ASYNC")
    return found and flag in ASYNC_TRUE


def header(req: Request, name: bytes) -> str | None:
    """A request header's value (``name`` in lower case), or None."""
    return next((v.decode("latin-1") for h, v in req.headers if h == name), None)


def wanted_format(req: Request, stream_field: object = None) -> streams.Format:
    """The format the caller asked for: its ``Accept`` header, else the body's ``STREAM``."""
    return streams.wanted(header(req, b"accept"), stream_field)


def sticky_key(policy: TrafficPolicy, raw: bytes, req: Request) -> str | None:
    """What pins a caller to a version: the body's sticky field, else its tenant (the
    key's, or ``X-Customer-ID``); None: a random pick by weight."""
    if policy.sticky_field:
        found, value = protocol.peek_field(raw, policy.sticky_field)
        if found and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        return None
    if req.key is not None:
        return str(req.key.tenant)
    return header(req, b"x-customer-id")


def plan_run(signature: str, raw: bytes, req: Request, routes: RouteSnapshot,
             may_take: Allowed) -> RunPlan:
    """The plan of a request naming ``signature`` (``may_take(target)``: whether a
    version may get unpinned requests now)."""
    label, pinned = split_target(signature)
    policy = routes.traffic.get(label)
    if policy is None:
        return RunPlan(label, signature, pinned)
    if pinned is None:
        signature = policy.versions[choose(policy, sticky_key(policy, raw, req), may_take)]
        pinned = split_target(signature)[1]
    return RunPlan(label, signature, pinned, policy if policy.shadow else None)


class Planner:
    """:func:`plan_run` with the plans of whole routes kept for as long as the route table
    is the same: a request naming a route (not an endpoint with versions, whose pick
    varies) always gets the same plan, and making one costs more than finding it."""

    def __init__(self) -> None:
        self._table: RouteSnapshot | None = None
        self._plans: dict[str, RunPlan] = {}  # at most one per route of the table

    def plan(self, signature: str, raw: bytes, req: Request, routes: RouteSnapshot,
             may_take: Allowed) -> RunPlan:
        """The plan of a request naming ``signature`` (see :func:`plan_run`)."""
        if routes is not self._table:
            self._table, self._plans = routes, {}
        plan = self._plans.get(signature)
        if plan is None:
            plan = plan_run(signature, raw, req, routes, may_take)
            if signature in routes.endpoints:
                self._plans[signature] = plan
        return plan


def series(routes: RouteSnapshot, label: str, version: str | None) -> tuple[str, str | None]:
    """The labels a request is counted under, in metrics and metering: its endpoint
    and version when the route table knows them, else one fixed label (no caller can
    make new series or rows by naming what does not exist)."""
    if label == NO_LABEL:
        return label, None
    if (label in routes.endpoints or label in routes.traffic) and (
            version is None or f"{label}{VERSION_SEP}{version}" in routes.endpoints):
        return label, version
    return UNKNOWN, None
