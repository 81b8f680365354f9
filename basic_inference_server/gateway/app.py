"""The gateway front: routes ``/run`` by ``SIGNATURE``; the rest goes to the manager.

``/run`` is served on the event loop (see :mod:`.worker`): ``SIGNATURE`` is read from
the raw body without decoding it (:func:`..protocol.route_field`, which refuses a body
whose bytes might not say what decoding reads), the body bytes are forwarded as they
came to the least busy worker, and the answer is passed through. Jobs are decoded
first: the decoded body names the endpoint checked, limited and queued.
Each endpoint may hold at most ``MAX_IN_FLIGHT`` requests at once, counted over all
front processes; past it the front answers 503 ``overloaded`` at once, so one stuck
endpoint can never hold the front's capacity.

Everything that blocks runs in a bounded thread pool off the loop: the management
Flask app (through a WSGI environ) and job submission (queue I/O). The front keeps no
state but the route table, so the manager can restart it freely.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl

from .. import protocol
from ..contracts import FrontSpec
from ..errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    ServingError,
    Unavailable,
)
from ..queues import JobsSpec
from ..serving.connection import Answer, Limits, Request, call_wsgi, error_answer
from ..tenants import TenantsSpec
from ..tenants.gate import TenantGate
from ..tenants.keys import ApiKey
from ..tenants.limits import Plan
from ..tenants.quotas import Reservation
from ..tenants.store import KeyStore
from ..tenants.usage import strip_usage
from ..traffic.hooks import Hooks
from ..traffic.remote import remote_body
from ..traffic.router import choose
from ..traffic.settings import VERSION_SEP, split_target
from ..traffic.shadow import Shadow
from . import dashboard_events, metrics
from .api_table import NATIVE
from .job_events import events_job_id, job_events
from .jobs import JobsFront, job_route
from .loadboard import LoadBoard
from .management import READY, build_management_app
from .pipelines import run_route
from .routes import RouteTable
from .stream_relay import hold_tenant, in_flight_until_end, skip_mirror, stream_answer
from .tls import tls_context
from .traffic_hooks import TrafficHooks
from .upstream import Upstream, UpstreamStream, head_lines

access_log = logging.getLogger("bis.access")
WAITABLE = ("STARTING", "RESTARTING")
# The one label of requests for an endpoint or version the route table does not know.
UNKNOWN = "unknown"
# Values of a request's ASYNC field that make it a job (a query string carries text).
ASYNC_TRUE = (True, "true", "True", "1")
# Bodies up to this size are decoded when the raw scan finds no usable SIGNATURE, so the
# caller gets the decoder's exact complaint; larger ones get a short one.
DECODE_SMALL = 64 * 1024
# Scanning a body this large takes a while: it is done off the event loop.
SCAN_OFF_LOOP = 1024 * 1024


def _is_async(raw: bytes) -> bool:
    """Whether a ``/run`` body asks to become a job (``"ASYNC": true``)."""
    if b'"ASYNC"' not in raw:
        return False
    found, flag = protocol.peek_field(raw, "ASYNC")
    return found and flag in ASYNC_TRUE


class Front:
    """The gateway front's request handling, shared by every connection of a process."""
    on_dashboard_events = dashboard_events.answer  # GET /dashboard/events: its own module

    def __init__(self, spec: FrontSpec) -> None:
        self.spec = spec
        self.routes = RouteTable(spec.routes)
        # Rows: one per front process; columns: worker sockets, "@<endpoint>" (requests
        # in flight per endpoint) and "#connections".
        self.board = LoadBoard(rows=spec.workers)
        self.upstream = Upstream(self.board)
        self.traffic = TrafficHooks(spec.control)
        self.jobs = JobsFront(JobsSpec(**spec.jobs) if spec.jobs else None)
        self.shadow = Shadow(self.dispatch, metrics.record_shadow,
                             hooks=Hooks(spec.endpoints_dir), off_loop=self.off_loop)
        # The key store always (the admin API); the checks only with API_KEYS on.
        tenants = TenantsSpec(**spec.tenants) if spec.tenants else None
        self.key_gate = TenantGate(tenants, self.off_loop, spec.workers) if tenants else None
        self.gate = self.key_gate if tenants and tenants.enabled else None
        self._internal_auth = (b"Bearer " + spec.internal_token.encode()
                               if spec.internal_token else b"")
        self.flask = build_management_app(self)
        self.limits = Limits(header_timeout=spec.header_timeout, body_timeout=spec.body_timeout,
                             keepalive_timeout=spec.keepalive_timeout,
                             max_body=spec.max_request_size,
                             max_other_body=min(spec.max_request_size, Limits.max_other_body))
        # Loaded in the master, before the fork: a bad certificate stops the start.
        self.tls = tls_context(spec.tls_cert, spec.tls_key)
        self.pool: ThreadPoolExecutor | None = None
        # The routes answered here, not by the Flask app (the API table names them).
        self.native: dict[str, Callable[[Request], Awaitable[Answer]]] = {
            path: getattr(self, handler) for path, handler in NATIVE.items()}

    def start(self) -> None:
        """In each front process, after the fork, on its loop: the thread pool for
        blocking work, the traffic reports to the manager."""
        self.pool = ThreadPoolExecutor(max_workers=self.spec.threads,
                                       thread_name_prefix="bis-front")
        self.traffic.start()
        if self.key_gate is not None:
            self.key_gate.claim_row(self.board.row)

    async def off_loop(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, func, *args)

    def meta(self) -> dict[str, Any]:
        return protocol.base_meta(self.spec.server_name, self.spec.app_version)

    def key_store(self) -> KeyStore:
        """Where the admin API keeps API keys."""
        if self.key_gate is None:
            raise Unavailable("API keys are not configured on this gateway")
        return self.key_gate.store

    # -- dispatch -----------------------------------------------------------------
    async def handle(self, req: Request) -> Answer:
        native = self.native.get(req.path)
        if native is not None:
            return await native(req)
        if (job_id := events_job_id(req.path)) is not None:
            return await job_events(self.jobs, req, job_id, self.gate, self.off_loop, self.meta())
        if self.gate is not None and req.path.startswith("/jobs/") \
                and req.path not in ("/jobs/dead", "/jobs/requeue"):
            try:
                req.key = await self.gate.authenticate(req.headers)
            except ServingError as err:
                return error_answer(err, self.meta())
        return await self.off_loop(self.wsgi, req)

    async def on_usage(self, req: Request) -> Answer:
        """``GET /usage``: the calling key's limits, quota and spending."""
        try:
            if req.method != "GET":
                raise MethodNotAllowed(f"{req.method} is not allowed on /usage; use GET",
                                       allow=("GET",))
            if self.gate is None:
                raise NotFound("GET /usage needs API keys (API_KEYS)")
            key = await self.gate.authenticate(req.headers)
            return Answer(200, [("Content-Type", protocol.JSON)],
                          protocol.dumps({**await self.gate.usage(key), **self.meta()}))
        except ServingError as err:
            return error_answer(err, self.meta())

    async def on_jobs(self, req: Request) -> Answer:
        """``POST /jobs``: submit a job."""
        if req.method != "POST":
            return error_answer(MethodNotAllowed(
                f"{req.method} is not allowed on /jobs; POST a job, GET /jobs/<id>",
                allow=("POST",)), self.meta())
        return await self._submit(req)

    # -- /run ---------------------------------------------------------------------
    async def on_run(self, req: Request) -> Answer:
        """``/run``: route by SIGNATURE, forward, pass the answer through.

        With ``"ASYNC": true`` the request becomes a job instead (POST only: a GET
        never creates anything).
        """
        started = time.perf_counter()
        label = "-"  # the endpoint label until a valid SIGNATURE is read
        version: str | None = None
        slot = None
        held: Reservation | None = None  # a requests quota's request, reserved
        try:
            if self.gate is not None and not self._internal(req):
                req.key = self.gate.cached(req.headers) or await self.gate.authenticate(
                    req.headers)
            if req.method == "POST" and _is_async(req.body):
                return await self._submit(req)
            signature, raw = await self._target(req)
            label, version = split_target(signature)
            target = self._pick(signature, version, raw, req)
            version = split_target(target)[1]
            if req.key is not None:
                slot, req.limits = (self.gate.admit_held(req.key, label)  # type: ignore[union-attr]
                                    or await self.gate.admit(req.key, label))  # type: ignore[union-attr]
                if req.key.quota is not None:
                    held = await self.gate.take_quota(req.key)  # type: ignore[union-attr]
            resp = await self.dispatch(target, raw, req)
            if resp.stream is not None:
                slot, held = self._held_by_stream(req, resp.stream, label, slot, held, started)
            units = await self._charge(req, resp, held)
        except ServingError as err:
            label, version = self._series(label, version)
            metrics.count_request(label, version, err.status)
            if req.key is not None:
                self.gate.record(req.key, label, err.status, 0.0,  # type: ignore[union-attr]
                                 time.perf_counter() - started)
            return error_answer(err, self.meta())
        finally:
            if slot is not None and not self.gate.release_held(slot):  # type: ignore[union-attr]
                await self.gate.give_back(slot)  # type: ignore[union-attr]
            if held is not None and not held.kept:  # not answered 200: not charged
                await self.gate.release_quota(held)  # type: ignore[union-attr]
        self._mirror(label, version, raw, req, resp)
        return self._answered(req, resp, label, version, units, time.perf_counter() - started)

    def _held_by_stream(self, req: Request, stream: UpstreamStream, label: str, slot: Plan | None,
                        held: Reservation | None,
                        started: float) -> tuple[Plan | None, Reservation | None]:
        """A key's concurrency slot and quota reservation, held until the stream ends."""
        if self.gate is not None and req.key is not None:
            stream.hold(hold_tenant(self.gate, req, label, slot, held, started))
            return None, None
        return slot, held  # (None without a key)

    def _mirror(self, name: str, version: str | None, raw: bytes, req: Request, resp: Any) -> None:
        """Hand a copy of the request to the endpoint's shadow version, if it has one: a
        task of this loop; the caller's answer goes out at once (traffic/shadow.py)."""
        policy = self.routes.table().get("traffic", {}).get(name)
        if policy is not None and policy.get("shadow"):
            if resp.stream is not None:  # not mirrored (docs/traffic.md)
                return skip_mirror(name, policy["shadow"], version, req.request_id)
            self.shadow.maybe_mirror(name, policy, version, raw, req, req.request_id, resp)

    async def dispatch(self, target: str, raw: bytes, req: Request) -> Any:
        """Send a request to the route ``target`` through its breaker, recording its
        outcome (breaker, rollout stats): a ``/run``, a pipeline's step, a shadow's copy."""
        route = await self._resolve(target)
        if route.get("breaker") is None and route.get("version") is None:
            # Nothing judges this target (no breaker, no rollout): no bookkeeping to pay.
            return await self._forward(route, target, raw, req)
        with self.traffic.guard(target, route) as outcome:
            resp = await self._forward(route, target, raw, req)
            outcome.status = resp.status
            if resp.stream is not None:  # judged by how the stream ends
                resp.stream.hold(self.traffic.later(target, route, outcome))
        return resp

    def may_take(self, target: str) -> bool:
        """Whether a version may get unpinned requests now: READY, its breaker not open."""
        route = self.routes.get(target)
        return route is not None and route["state"] == READY and self.traffic.allowed(target)

    def _pick(self, signature: str, pinned: str | None, raw: bytes, req: Request) -> str:
        """The route a ``/run`` goes to: a pinned version as named, else the version the
        endpoint's traffic policy picks (``signature`` itself when it has no versions)."""
        policy = None if pinned else self.routes.table().get("traffic", {}).get(signature)
        if policy is None:
            return signature
        key = None
        if policy["sticky_field"]:
            found, value = protocol.peek_field(raw, policy["sticky_field"])
            if found and isinstance(value, (str, int, float)) and not isinstance(value, bool):
                key = str(value)
        elif req.key is not None:
            key = req.key.tenant
        else:
            key = next((v.decode("latin-1") for h, v in req.headers if h == b"x-customer-id"),
                       None)
        return str(policy["versions"][choose(policy, key, self.may_take)])

    def _internal(self, req: Request) -> bool:
        """A call of the job runner (the manager's internal credential): it needs no API
        key, the job's limits were taken when it was submitted, and it names the job's
        tenant with X-Customer-ID."""
        if self._internal_auth:
            for header, value in req.headers:
                if header == b"authorization":
                    return hmac.compare_digest(value, self._internal_auth)
        return False

    async def _target(self, req: Request) -> tuple[str, bytes]:
        """The endpoint a ``/run`` names and the body to forward to it."""
        if req.method == "POST":
            return await self._signature(req.body), req.body
        if req.method == "GET":
            query = dict(parse_qsl(req.query))
            if query.get("ASYNC") in ASYNC_TRUE:
                raise MethodNotAllowed("jobs are submitted with POST /run or POST /jobs; "
                                       "GET /run only runs a request", allow=("POST",))
            return protocol.signature_of(query), protocol.dumps(query)  # type: ignore[arg-type]
        raise MethodNotAllowed(f"{req.method} is not allowed on /run; use POST",
                               allow=("GET", "POST"))

    async def _charge(self, req: Request, resp: Any, held: Reservation | None) -> float | None:
        """Strip the endpoint's ``USAGE`` from the answer and charge it to the request's key
        (a 200 keeps its reserved request). The job runner's calls (no key) keep it: the
        runner charges the job's key. A stream's: when it ends (None)."""
        if resp.stream is not None:
            return None
        units = 0.0
        if req.key is not None and b'"USAGE"' in resp.body:
            resp.body, units = await self.off_loop(strip_usage, resp.body) \
                if len(resp.body) > SCAN_OFF_LOOP else strip_usage(resp.body)
        if req.key is not None and req.key.quota is not None and resp.status == 200:
            await self.gate.charge(req.key, units, held)  # type: ignore[union-attr]
        return units

    def _answered(self, req: Request, resp: Any, label: str, version: str | None,
                  units: float | None, elapsed: float) -> Answer:
        """Count, meter and log a forwarded answer, then pass it through (saying which
        version served it)."""
        metrics.count_request(label, version, resp.status)
        metrics.time_request(label, version, elapsed)
        if req.key is not None and units is not None:  # (a stream's: at its end)
            self.gate.record(req.key, label, resp.status, units, elapsed)  # type: ignore[union-attr]
        if self.spec.access_log:
            # One line per request; under BIS_LOG_JSON=1 the fields are JSON keys too.
            access_log.info("%s %d %.2f ms worker %s id %s", label, resp.status, elapsed * 1000,
                            resp.worker, req.request_id, extra={"access": {
                                "endpoint": label, "status": resp.status,
                                "latency_ms": round(elapsed * 1000, 2), "worker": resp.worker,
                                "request_id": req.request_id}})
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.headers]
        if req.limits is not None:
            headers += req.limits.headers()
        if version is not None:
            headers.append(("X-Endpoint-Version", version))
        if resp.stream is not None:
            return stream_answer(Answer(resp.status, headers), resp.stream, label, self.meta(),
                                 time.perf_counter() - elapsed, req.key is not None)
        return Answer(resp.status, headers, resp.body)

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

    async def _forward(self, route: dict[str, Any], name: str, raw: bytes,
                       req: Request) -> Any:
        key = "@" + name
        limit = int(route.get("max_in_flight") or 0)
        if limit and self.board.load(key) >= limit:
            raise Overloaded(f"endpoint {name} has {limit} requests in flight (MAX_IN_FLIGHT); "
                             "retry shortly", retry_after=1, SIGNATURE=name, MAX_IN_FLIGHT=limit)
        remote = route.get("remote")
        head = head_lines(req, remote)
        gauge = metrics.in_flight(name)
        gauge.inc()
        self.board.add(key, 1)
        resp = None
        try:
            if "pipeline" in route:
                resp = await run_route(self, route, name, raw, req)
            elif remote is not None:
                resp = await self._forward_remote(route, name, head, raw)
            else:
                resp = await self.upstream.forward(route, name, head, raw)
            return resp
        finally:
            if resp is not None and resp.stream is not None:  # in flight until it ends
                resp.stream.hold(in_flight_until_end(self.board, key, gauge))
            else:
                self.board.add(key, -1)
                gauge.dec()

    async def _forward_remote(self, route: dict[str, Any], name: str, head: bytes,
                              raw: bytes) -> Any:
        """A remote endpoint (``URLS``): the body names the remote's SIGNATURE (by default
        this endpoint's name, without a version label), then goes over TCP."""
        signature = route["remote"]["signature"] or split_target(name)[0]
        if len(raw) > SCAN_OFF_LOOP:
            raw = await self.off_loop(remote_body, raw, signature)
        else:
            raw = remote_body(raw, signature)
        return await self.upstream.forward_remote(route, name, head, raw)

    async def _resolve(self, name: str) -> dict[str, Any]:
        """The route of a READY endpoint, or the error to answer with."""
        route = self.routes.get(name)
        if route is None or route["state"] != READY:
            # The cached table may be 50 ms old: before an error, read the current one (an
            # endpoint /start_server has just started must not be unknown or STOPPED).
            route = self.routes.get(name, fresh=True)
        if route is None:
            raise NotFound(f"unknown SIGNATURE {name!r}", AVAIL_SERVERS=self.routes.names())
        if route["state"] == READY:
            return route
        if route["state"] in WAITABLE and not self.routes.table().get("no_startup_wait", True):
            deadline = time.monotonic() + float(route["timeout"])
            while time.monotonic() < deadline and route["state"] in WAITABLE:
                # Poll the route file (a stat) until the endpoint is ready, has failed
                # (no use waiting for a model that did not load), or time is up.
                await asyncio.sleep(0.02)
                route = self.routes.get(name, fresh=True) or route
                if route["state"] == READY:
                    return route
        raise Unavailable(
            f"endpoint {name} is {route['state']}"
            + (f": {route['last_error']}" if route.get("last_error") else ""),
            retry_after=route.get("retry_after", 1), SIGNATURE=name, STATE=route["state"])

    # -- jobs ---------------------------------------------------------------------
    async def _submit(self, req: Request) -> Answer:
        """``POST /jobs`` (or ``/run`` with ``ASYNC``): decode the body, check the key
        against the endpoint it names, enqueue. The decoded body decides scope, limits
        and the queue, as it decides what runs: its bytes are not scanned here."""
        key: ApiKey | None = None
        held: Reservation | None = None
        label = "-"  # the endpoint label until a valid SIGNATURE is read
        try:
            if self.gate is not None:
                key = req.key or await self.gate.authenticate(req.headers)
            body = await self.off_loop(protocol.parse_body, req.body) \
                if len(req.body) > DECODE_SMALL else protocol.parse_body(req.body)
            name = protocol.signature_of(body)
            label = split_target(name)[0]
            if key is not None:
                held = await self._admit_job(key, label)
        except ServingError as err:
            metrics.count_request(*self._series(label, None), err.status)
            return error_answer(err, self.meta())
        # The job runs with the tenant as X-Customer-ID, as a /run would: the key's, or
        # without keys the one the client sent.
        customer = key.tenant if key else next(
            (v.decode("latin-1") for h, v in req.headers if h == b"x-customer-id"), None)
        answer: Answer | None = None
        try:
            answer = await self.off_loop(self.submit_job, name, body, len(req.body), key,
                                         customer)
        finally:
            if held is not None and (answer is None or answer.status != 202):
                await self.gate.release_quota(held)  # type: ignore[union-attr]  # not queued
        return answer

    async def _admit_job(self, key: ApiKey, label: str) -> Reservation | None:
        """A job's key check at submit time, by its endpoint's label (as a ``/run``'s)."""
        assert self.gate is not None
        # Limits apply at submit time: one request, its concurrency slot given back
        # once it is admitted. A requests quota's request is reserved here, kept once
        # the job is queued (the job's consumer gives it back if the job does not end
        # with a 200); a units quota is checked, its units charged when the job runs.
        slot = None
        try:
            slot, _ = await self.gate.admit(key, label)
            held: Reservation | None = await self.gate.take_quota(key)
        finally:
            if slot is not None:
                await self.gate.release(slot)
        return held

    def submit_job(self, name: str, body: dict[str, Any], size: int, key: ApiKey | None = None,
                   customer: str | None = None) -> Answer:
        """Enqueue the decoded job ``body`` for ``name`` (``size``: its bytes); in the pool."""
        try:
            route = job_route(self.routes.table(), name) \
                or job_route(self.routes.table(fresh=True), name)
            status, headers, answer = self.jobs.submit(name, body, size, route, self.meta(),
                                                       customer, key.id if key else None)
        except ServingError as err:
            metrics.count_request(*self._series(*split_target(name)), err.status)
            return error_answer(err, self.meta())
        return Answer(status, headers, answer)

    def _series(self, label: str, version: str | None) -> tuple[str, str | None]:
        """The labels a request is counted under, in metrics and metering: its endpoint
        and version when the route table knows them, else one fixed label (no caller
        can make new series or rows by naming what does not exist)."""
        if label == "-":
            return label, None
        table = self.routes.table()
        endpoints = table.get("endpoints", {})
        if (label in endpoints or label in table.get("traffic", {})) and (
                version is None or f"{label}{VERSION_SEP}{version}" in endpoints):
            return label, version
        return UNKNOWN, None

    # -- the management app -------------------------------------------------------
    def wsgi(self, req: Request) -> Answer:
        """Run the management Flask app on one request (in the pool)."""
        return call_wsgi(self.flask, req)
