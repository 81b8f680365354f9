"""The gateway front: routes ``/run`` by ``SIGNATURE``; the rest goes to the manager.

``/run`` is served on the event loop (see :mod:`.worker`) by the run flow
(:mod:`.run_flow`: plan, admit, dispatch, answer). Jobs are decoded first: the decoded
body names the endpoint checked, limited and queued (:mod:`.job_submit`). Each endpoint
may hold at most ``MAX_IN_FLIGHT`` requests at once, counted over all front processes;
past it the front answers 503 ``overloaded`` at once, so one stuck endpoint can never
hold the front's capacity.

Everything that blocks runs in a bounded thread pool off the loop: the management
Flask app (through a WSGI environ) and job submission (queue I/O). The front keeps no
state but the route table, so the manager can restart it freely.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import protocol
from ..audit import AuditLog, Refusals
from ..contracts import FrontSpec
from ..errors import MethodNotAllowed, NotFound, ServingError, Unavailable
from ..queues import JobsSpec
from ..tenants import TenantsSpec
from ..tenants.gate import TenantGate
from ..tenants.priorities import Priorities
from ..tenants.store import KeyStore
from ..tracing import Tracer, TracingSpec
from ..traffic.hooks import Hooks
from ..traffic.shadow import Shadow
from ..wire.connection import Answer, Limits, Request, call_wsgi, error_answer
from . import dashboard_events, metrics
from .address_limits import AddressTenancy
from .answer_cache import answer_cache
from .api_table import DATA_PATHS, NATIVE
from .dispatch import Dispatcher
from .fair_queue import FairQueue, NoFairQueue
from .fair_shared import SharedTags
from .idempotent_calls import IdempotentCalls
from .idle_watch import IdleWatch
from .job_events import events_job_id, job_events
from .job_submit import JobSubmitter
from .jobs import JobsFront
from .loadboard import LoadBoard
from .management import build_management_app
from .openai_front import OpenAIRoutes
from .pipelines import Pipelines
from .routes import RouteTable
from .run_flow import RunFlow
from .tenancy import KeyTenancy, NoTenancy, Tenancy
from .tls import tls_context
from .traffic_hooks import TrafficHooks
from .upstream import Upstream

# Job paths that carry no tenant: the admin's dead-letter views.
ADMIN_JOB_PATHS = ("/jobs/dead", "/jobs/requeue")


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
        # The key store always (the admin API); the checks only with API_KEYS on.
        tenants = TenantsSpec(**spec.tenants) if spec.tenants else None
        self.key_gate = TenantGate(tenants, self.off_loop, spec.workers) if tenants else None
        self.tenancy: Tenancy = NoTenancy()
        if self.key_gate is not None and self.key_gate.spec.enabled:
            self.tenancy = KeyTenancy(self.key_gate, self.off_loop, spec.internal_token)
        elif self.key_gate is not None and spec.anon_limit is not None:
            self.tenancy = AddressTenancy(self.key_gate, spec.anon_limit, spec.trusted_proxies)
        self.priorities = Priorities(spec.priority_classes, spec.default_priority,
                                     spec.tenant_shares)
        # The fair queue's shared memory is made here, in the master, before the fork.
        fair = FairQueue(self.board, SharedTags(self.board)) if spec.fair_queueing \
            else NoFairQueue()
        self.dispatcher = Dispatcher(self.routes, self.board, self.upstream, self.traffic,
                                     self.off_loop, spec.control, fair, self.priorities)
        self.idle_watch = IdleWatch(self.routes, self.board, self.jobs, spec.control,
                                    self.off_loop, self.dispatcher.wake)
        self.shadow = Shadow(self.dispatcher.dispatch, metrics.record_shadow,
                             hooks=Hooks(spec.endpoints_dir), off_loop=self.off_loop)
        self.submitter = JobSubmitter(self.jobs, self.routes, self.tenancy, self.off_loop,
                                      self.meta, self.dispatcher.wake, self.priorities)
        self.flow = RunFlow(self.dispatcher, self.tenancy, self.shadow, self.meta,
                            self.off_loop, self.submitter.submit, spec.access_log,
                            spec.server_timing, answer_cache(spec.cache_redis))
        self.dispatcher.pipelines = Pipelines(self.flow)
        self.openai = OpenAIRoutes(self.flow, self.routes, self.tenancy, spec.model_aliases,
                                   spec.max_request_size, IdempotentCalls(self.jobs, self.off_loop))
        self.audit = AuditLog(spec.cache_dir)
        self.refusals = Refusals(self.audit)
        self.flask = build_management_app(self)
        self.limits = Limits(header_timeout=spec.header_timeout, body_timeout=spec.body_timeout,
                             keepalive_timeout=spec.keepalive_timeout,
                             max_body=spec.max_request_size,
                             max_other_body=min(spec.max_request_size, Limits.max_other_body),
                             data_paths=DATA_PATHS)
        # Loaded in the master, before the fork: a bad certificate stops the start.
        self.tls = tls_context(spec.tls_cert, spec.tls_key)
        self.pool: ThreadPoolExecutor | None = None
        # The routes answered here, not by the Flask app (the API table names them).
        openai = self.openai.handlers()
        self.native: dict[str, Callable[[Request], Awaitable[Answer]]] = {
            path: openai.get(handler) or getattr(self, handler)
            for path, handler in NATIVE.items()}

    def start(self) -> None:
        """In each front process, after the fork, on its loop: the thread pool for
        blocking work, the traffic reports and the idle watch (scale to zero)."""
        self.pool = ThreadPoolExecutor(max_workers=self.spec.threads,
                                       thread_name_prefix="bis-front")
        self.traffic.start()
        self.idle_watch.start()
        self.dispatcher.fair.start()
        if self.spec.tracing:  # (here, after the fork: the exporter's thread is this process's)
            self.submitter.tracer = Tracer(TracingSpec(**self.spec.tracing), "front")
            self.flow.set_tracer(self.submitter.tracer)
        if self.key_gate is not None:
            self.key_gate.claim_row(self.board.row)

    async def off_loop(self, func: Any, *args: Any) -> Any:
        """Run a blocking call in the front's thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, func, *args)

    def meta(self) -> dict[str, Any]:
        """The gateway's fields of every answer."""
        return protocol.base_meta(self.spec.server_name, self.spec.app_version)

    def key_store(self) -> KeyStore:
        """Where the admin API keeps API keys."""
        if self.key_gate is None:
            raise Unavailable("API keys are not configured on this gateway")
        return self.key_gate.store

    # -- dispatch -----------------------------------------------------------------
    async def handle(self, req: Request) -> Answer:
        """Answer one request: a route of the front's own, else the management app."""
        native = self.native.get(req.path)
        if native is not None:
            return await native(req)
        if (job_id := events_job_id(req.path)) is not None:
            return await job_events(self.jobs, req, job_id, self.tenancy.gate, self.off_loop,
                                    self.meta())
        if req.path.startswith("/jobs/") and req.path not in ADMIN_JOB_PATHS:
            try:
                if not self.tenancy.identify_now(req, internal=False):
                    await self.tenancy.identify(req)
            except ServingError as err:
                return error_answer(err, self.meta())
        return await self.off_loop(self.call_management, req)

    def on_run(self, req: Request) -> Awaitable[Answer]:
        """``/run``: the run flow's (:mod:`.run_flow`), handed on without a coroutine of
        its own around it."""
        return self.flow.run(req)

    async def on_usage(self, req: Request) -> Answer:
        """``GET /usage``: the calling key's limits, quota and spending."""
        try:
            if req.method != "GET":
                raise MethodNotAllowed(f"{req.method} is not allowed on /usage; use GET",
                                       allow=("GET",))
            gate = self.tenancy.gate
            if gate is None:
                raise NotFound("GET /usage needs API keys (API_KEYS)")
            key = await gate.authenticate(req.headers)
            return Answer(200, [("Content-Type", protocol.JSON)],
                          protocol.dumps({**await gate.usage(key), **self.meta()}))
        except ServingError as err:
            return error_answer(err, self.meta())

    async def on_jobs(self, req: Request) -> Answer:
        """``POST /jobs``: submit a job."""
        if req.method != "POST":
            return error_answer(MethodNotAllowed(
                f"{req.method} is not allowed on /jobs; POST a job, GET /jobs/<id>",
                allow=("POST",)), self.meta())
        return await self.submitter.submit(req)

    # -- the management app -------------------------------------------------------
    def call_management(self, req: Request) -> Answer:
        """Run the management Flask app on one request (in the pool)."""
        return call_wsgi(self.flask, req)
