"""The ``/run`` flow: read the target, plan, admit the caller's key, dispatch, answer.

``SIGNATURE`` is read from the raw body without decoding it
(:func:`..protocol.route_field`, which refuses a body whose bytes might not say what
decoding reads), :func:`.run_plan.plan_run` decides where the request goes, the
caller's key is admitted (:mod:`.tenancy`), the body bytes are forwarded as they came
(:class:`.dispatch.Dispatcher`) and the answer is passed through: whole, or relayed
event by event (:mod:`.stream_relay`). A pipeline's steps come through
:meth:`RunFlow.call` the same way.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from .. import protocol
from ..deadlines import deadline_at
from ..errors import BadRequest, MethodNotAllowed, ServingError
from ..tracing import Tracer
from ..traffic.shadow import Shadow
from ..wire.message import Answer, Request, error_answer
from . import metrics
from .answer_cache import CACHE_EVENTS, AnswerCache
from .dispatch import Dispatcher
from .pipelines import StreamedPipeline
from .routes import RouteTable
from .run_plan import ASYNC_TRUE, NO_LABEL, Planner, RunPlan, is_async, series
from .shared_answers import CacheDown
from .stream_relay import skip_mirror, stream_answer
from .tenancy import NO_HOLD, Tenancy, TenantHold
from .upstream_conn import UpstreamResponse

access_log = logging.getLogger("bis.access")
# Bodies up to this size are decoded when the raw scan finds no usable SIGNATURE, so the
# caller gets the decoder's exact complaint; larger ones get a short one.
DECODE_SMALL = 64 * 1024
# Scanning a body this large takes a while: it is done off the event loop.
SCAN_OFF_LOOP = 1024 * 1024
OffLoop = Callable[..., Awaitable[Any]]
Submit = Callable[[Request], Awaitable[Answer]]
Meta = Callable[[], dict[str, Any]]


def _stages(upstream: tuple[float, float], started: float, elapsed: float) -> str:
    """The gateway's Server-Timing entries (the endpoint server's came with its answer)."""
    began, ended = upstream
    return (f"gate;dur={(began - started) * 1000:.3f}, upstream;dur={(ended - began) * 1000:.3f}, "
            f"gateway;dur={elapsed * 1000:.3f}")


class RunFlow:
    """``/run`` requests of one front process, and the steps of its pipelines."""

    def __init__(self, dispatcher: Dispatcher, tenancy: Tenancy, shadow: Shadow,
                 meta: Meta, off_loop: OffLoop, submit: Submit, access: bool = False,
                 timing: bool = False, cache: AnswerCache | None = None) -> None:
        self.dispatcher = dispatcher
        self.routes: RouteTable = dispatcher.routes
        self.tenancy = tenancy
        self.shadow = shadow
        self.meta = meta
        self.off_loop = off_loop
        self.submit = submit  # a job (``"ASYNC": true``)
        self.access = access
        # SERVER_TIMING: the upstream call is timed (off: no clock read at all).
        self.forward = self._timed_forward if timing else dispatcher.dispatch
        self.planner = Planner()
        self.cache = cache if cache is not None else AnswerCache()
        self.tracer: Tracer | None = None  # TRACING: set in each front process (set_tracer)
        self._begin: Callable[[Request, float], None] = _untraced
        self._closing = access  # an answer's end has work: its access line, its span

    async def run(self, req: Request) -> Answer:
        """``/run``: route by SIGNATURE, forward, pass the answer through. With
        ``"ASYNC": true`` the request becomes a job instead (POST only: a GET never
        creates anything)."""
        started = time.perf_counter()
        plan: RunPlan | None = None
        hold = NO_HOLD
        tenancy = self.tenancy
        self._begin(req, started)
        try:
            if not tenancy.identify_now(req):
                await tenancy.identify(req)
            if req.method == "POST" and is_async(req.body):
                return await self._submitted(req)
            signature, raw = await self.target(req)
            plan = self.planner.plan(signature, raw, req, self.routes.table(),
                                     self.dispatcher.may_take)
            req.deadline = deadline_at(req.headers, req.received)
            hold = tenancy.admit_now(req, plan.label) or await self._admitted(req, plan.label,
                                                                              started)
            req.limits = hold.limits
            resp = await self._answer(plan, raw, req)
            if resp.stream is not None:  # charged when it ends
                hold, units = tenancy.stream_held(hold, resp, started), None
            else:
                units = tenancy.charge_now(hold, resp)
                if units is None:
                    units = await tenancy.charge(hold, resp)
        except ServingError as err:
            return self._failed(err, req, plan, started)
        finally:
            if hold is not NO_HOLD and not tenancy.release_now(hold):
                await tenancy.release(hold)
        self.mirror(plan, raw, req, resp)
        return self._answered(req, resp, plan, units, started)

    def set_tracer(self, tracer: Tracer) -> None:
        """TRACING on (in each front process, after the fork): requests are sampled."""
        self.tracer = tracer
        self._begin = functools.partial(_traced, tracer)
        self._closing = True

    async def _admitted(self, req: Request, label: str, started: float) -> TenantHold:
        """A request the tenant gate admits after waiting (a store's answer)."""
        hold = await self.tenancy.admit(req, label)
        if req.trace is not None:
            req.trace.record("gate", started, time.perf_counter())
        return hold

    async def _submitted(self, req: Request) -> Answer:
        """A ``/run`` with ``"ASYNC": true``: submitted as a job."""
        answer = await self.submit(req)
        if req.trace is not None:
            req.trace.end({"http.response.status_code": answer.status})
        return answer

    async def _answer(self, plan: RunPlan, raw: bytes, req: Request) -> UpstreamResponse:
        """The endpoint's answer, or the one kept for the same request (``CACHE``)."""
        route = self.routes.get(plan.target)
        settings = route.cache if route is not None else None
        if settings is None:
            return await self.forward(plan.target, raw, req)
        if not self.cache.cacheable(req, raw):
            CACHE_EVENTS.labels(plan.label, "skipped").inc()
            return await self.forward(plan.target, raw, req)
        key = self.cache.key(req, plan.target, raw)
        try:
            kept = await self.cache.get(plan.target, key)
        except CacheDown:  # the cache is a saving, never a reason to fail
            CACHE_EVENTS.labels(plan.label, "error").inc()
            return await self.forward(plan.target, raw, req)
        if kept is not None:
            CACHE_EVENTS.labels(plan.label, "hit").inc()
            return kept
        CACHE_EVENTS.labels(plan.label, "miss").inc()
        resp = await self.forward(plan.target, raw, req)
        if not await self.cache.put(plan.target, key, resp, settings):
            CACHE_EVENTS.labels(plan.label, "error").inc()
        return resp

    async def _timed_forward(self, target: str, raw: bytes, req: Request) -> UpstreamResponse:
        """The dispatch of a request, its span kept for its Server-Timing (SERVER_TIMING)."""
        began = time.perf_counter()
        resp = await self.dispatcher.dispatch(target, raw, req)
        req.upstream_span = (began, time.perf_counter())
        return resp

    def plan(self, signature: str, raw: bytes, req: Request) -> RunPlan:
        """Where a request naming ``signature`` goes (see :func:`.run_plan.plan_run`)."""
        return self.planner.plan(signature, raw, req, self.routes.table(),
                                 self.dispatcher.may_take)

    async def send(self, plan: RunPlan, raw: bytes, req: Request) -> UpstreamResponse:
        """Carry out a plan for a request already admitted (a pipeline's step): its answer."""
        return await self.dispatcher.dispatch(plan.target, raw, req)

    def mirror(self, plan: RunPlan, raw: bytes, req: Request, resp: UpstreamResponse) -> None:
        """Hand a copy of the request to the endpoint's shadow version, if it has one: a
        task of this loop; the caller's answer goes out at once (traffic/shadow.py)."""
        policy = plan.shadow
        if policy is None or policy.shadow is None:
            return
        if resp.stream is not None:  # not mirrored (docs/traffic.md)
            skip_mirror(plan.label, policy.shadow, plan.version, req.request_id)
            return
        self.shadow.maybe_mirror(plan.label, policy, plan.version, raw, req,
                                 req.request_id, resp)

    async def target(self, req: Request) -> tuple[str, bytes]:
        """The endpoint a ``/run`` names and the body to forward to it."""
        if req.method == "POST":
            return await self._signature(req.body), req.body
        if req.method == "GET":
            query: dict[str, Any] = dict(parse_qsl(req.query))
            if query.get("ASYNC") in ASYNC_TRUE:
                raise MethodNotAllowed("jobs are submitted with POST /run or POST /jobs; "
                                       "GET /run only runs a request", allow=("POST",))
            return protocol.signature_of(query), protocol.dumps(query)
        raise MethodNotAllowed(f"{req.method} is not allowed on /run; use POST",
                               allow=("GET", "POST"))

    async def _signature(self, raw: bytes) -> str:
        """The body's SIGNATURE, read without decoding the body; 400 when unusable, or
        when the bytes might not say what decoding reads (SIGNATURE twice at the top
        level, an escape in a top-level key: see :func:`..protocol.route_field`)."""
        if len(raw) > SCAN_OFF_LOOP:
            found, value = await self.off_loop(protocol.route_field, raw)
        else:
            found, value = protocol.route_field(raw)
        if found and isinstance(value, str) and value:
            return value
        if len(raw) <= DECODE_SMALL:
            return protocol.signature_of(protocol.parse_body(raw))
        if not protocol.looks_like_object(raw):
            raise BadRequest("body must be a JSON object with a SIGNATURE field")
        if found and value is protocol.CONTAINER:
            raise BadRequest("SIGNATURE must be a non-empty string, got an object or array")
        return protocol.signature_of({"SIGNATURE": value} if found else {})

    def _failed(self, err: ServingError, req: Request, plan: RunPlan | None,
                started: float) -> Answer:
        """Count and meter a refused or failed request; its error answer."""
        label, version = (plan.label, plan.version) if plan is not None else (NO_LABEL, None)
        label, version = series(self.routes.table(), label, version)
        metrics.count_request(label, version, err.status)
        self.tenancy.record(req.key, label, err.status, 0.0, time.perf_counter() - started)
        if req.trace is not None:
            req.trace.end({"http.response.status_code": err.status, "bis.endpoint": label,
                             "bis.error": err.kind})
        return error_answer(err, self.meta())

    def _answered(self, req: Request, resp: UpstreamResponse, plan: RunPlan,
                  units: float | None, started: float) -> Answer:
        """Count, meter and log a forwarded answer, then pass it through (saying which
        version served it, and with SERVER_TIMING the gateway's stages)."""
        elapsed = time.perf_counter() - started
        label, version = plan.label, plan.version
        metrics.count_request(label, version, resp.status)
        metrics.time_request(label, version, elapsed)
        if units is not None:  # (a stream's: at its end)
            self.tenancy.record(req.key, label, resp.status, units, elapsed)
        if self._closing:
            _close(req, resp, label, elapsed, self.access)
        headers = req.limits.headers() if req.limits is not None else []
        if version is not None:
            headers.append(("X-Endpoint-Version", version))
        if req.upstream_span is not None:
            headers.append(("Server-Timing", _stages(req.upstream_span, started, elapsed)))
        if resp.stream is not None:
            # (The relay reads and adds to a stream's headers: decoded.)
            headers[:0] = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.headers]
            before = resp.units_before if isinstance(resp, StreamedPipeline) else 0.0
            return stream_answer(Answer(resp.status, headers), resp.stream, label, self.meta(),
                                 time.perf_counter() - elapsed, req.key is not None, before)
        return Answer(resp.status, headers, resp.body,
                      raw_headers=b"".join([b"%s: %s\r\n" % pair for pair in resp.headers]))


def _untraced(_req: Request, _started: float) -> None:
    """TRACING off: no trace."""


def _traced(tracer: Tracer, req: Request, started: float) -> None:
    """A request's trace, when sampled (see :mod:`..tracing`)."""
    req.trace = tracer.begin("run", req.headers, req.received or started, True,
                             **{"bis.request_id": req.request_id})


def _close(req: Request, resp: UpstreamResponse, label: str, elapsed: float,
           access: bool) -> None:
    """A traced request's span ends; the access log's line (under BIS_LOG_JSON=1 its
    fields are JSON keys too), with the trace id of a traced request."""
    if req.trace is not None:
        req.trace.end({"http.response.status_code": resp.status, "bis.endpoint": label})
    if not access:
        return
    fields = {"endpoint": label, "status": resp.status, "latency_ms": round(elapsed * 1000, 2),
              "worker": resp.worker, "request_id": req.request_id}
    line = "%s %d %.2f ms worker %s id %s"
    args: list[Any] = [label, resp.status, elapsed * 1000, resp.worker, req.request_id]
    if req.trace is not None:
        fields["trace_id"] = req.trace.trace_id
        line += " trace %s"
        args.append(fields["trace_id"])
    access_log.info(line, *args, extra={"access": fields})
