"""What the processes of one gateway tell each other: start-up specs and the route table.

The manager builds a spec, :func:`~basic_inference_server.manager.children.spawn` sends
it as JSON, and the child rebuilds the same dataclass from it. A process package
(gateway, server, manager, supervisor, support, jobrunner) imports another's contract from here,
never from that package. Defaults come from the top-level settings table, so that a spec
built without a key means what the configuration's default means. The notify socket's
event names are not here but at the bottom of the import graph (:mod:`.events`), where an
endpoint worker reads them without loading these specs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .gateway_settings import GATEWAY_SETTINGS
from .setting import DEFAULT_LOAD_TIMEOUT

# The modules the manager runs as ``python -m <module> --spec-fd N``.
FRONT_MODULE = "basic_inference_server.gateway"
SERVER_MODULE = "basic_inference_server.server"
SUPERVISOR_MODULE = "basic_inference_server.supervisor"
SUPPORT_LAUNCHER = "basic_inference_server.support.launch"
JOBRUNNER_MODULE = "basic_inference_server.jobrunner"

# A worker's health probe listens beside the worker's own socket, with this suffix.
PROBE_SUFFIX = ".ping"


def probe_path(worker_socket: str) -> str:
    """Where the probe of the worker serving ``worker_socket`` listens."""
    return worker_socket + PROBE_SUFFIX


# GPU placement by memory (GPU_MEMORY_MB): a GPU index -> the workers the manager placed
# there. In JSON (a ServerSpec, the workers file) the indices are strings.
GpuQuota = dict[int, int]


def quota_to_json(quota: GpuQuota | None) -> dict[str, int] | None:
    """A quota as JSON carries it: the GPU indices as strings."""
    return None if quota is None else {str(g): n for g, n in quota.items()}


def quota_of_json(raw: dict[str, Any] | None) -> GpuQuota | None:
    """A quota from JSON (string keys) -> GPU index to workers."""
    return None if raw is None else {int(k): int(v) for k, v in raw.items()}


def workers_path(server_socket: str, generation: int) -> str:
    """Where the manager writes the worker count the master of ``generation`` of the
    server on ``server_socket`` steers to, on the next SIGTTIN or SIGTTOU: JSON,
    ``{"workers": n, "gpu_quota": {"<gpu>": workers, ...} | null}``."""
    return f"{server_socket}.g{generation}.workers"


def _default(key: str) -> Any:
    return GATEWAY_SETTINGS[key].default


@dataclass
class FrontSpec:
    """What the manager tells the gateway front."""

    routes: str
    control: str
    workers: int = _default("GATEWAY_WORKERS")
    threads: int = _default("GATEWAY_THREADS")
    sched_batch: bool = _default("SCHED_BATCH")
    server_timing: bool = _default("SERVER_TIMING")
    max_request_size: int = _default("MAX_REQUEST_SIZE")
    admin_token: str | None = None  # None only with INSECURE_NO_ADMIN_AUTH
    metrics_token: str | None = None  # METRICS_TOKEN: reads /metrics only
    metrics_tenant_labels: bool = _default("METRICS_TENANT_LABELS")
    allowed_hosts: list[str] | None = None  # ALLOWED_HOSTS
    server_name: str = _default("SERVER_NAME")
    app_version: str = _default("APP_VERSION")
    stop_timeout: float = _default("STOP_TIMEOUT")
    access_log: bool = _default("ACCESS_LOG")
    jobs: dict[str, Any] | None = None  # queues.JobsSpec
    header_timeout: float = _default("HEADER_TIMEOUT")
    body_timeout: float = _default("BODY_TIMEOUT")
    keepalive_timeout: float = _default("KEEPALIVE_TIMEOUT")
    max_connections: int = _default("MAX_CONNECTIONS")
    tls_cert: str | None = _default("TLS_CERT")
    tls_key: str | None = _default("TLS_KEY")
    tenants: dict[str, Any] | None = None  # tenants.TenantsSpec: API keys, limits, quotas
    endpoints_dir: str | None = None  # where SHADOW.HOOK modules are found
    # The job runner's credential: a /run that presents it needs no API key and names
    # its tenant with X-Customer-ID (see JobRunnerSpec).
    internal_token: str | None = None
    # The cache folder: where each front process appends to the audit trail (..audit).
    cache_dir: str = "_cache"
    # MODEL_ALIASES: the OpenAI routes' model names besides the routes' own.
    model_aliases: dict[str, str] = field(default_factory=dict)
    # CACHE_REDIS: the answer caches' Redis (None: each front process's memory).
    cache_redis: str | None = None
    # ANON_LIMIT and TRUSTED_PROXIES: a bucket per client address with keys off.
    anon_limit: dict[str, Any] | None = None
    trusted_proxies: list[str] = field(default_factory=list)
    # FAIR_QUEUEING, and the classes and tenants it orders requests by.
    fair_queueing: bool = _default("FAIR_QUEUEING")
    priority_classes: list[str] = field(default_factory=lambda: _default("PRIORITY_CLASSES"))
    default_priority: str = _default("DEFAULT_PRIORITY")
    tenant_shares: dict[str, dict[str, Any]] = field(default_factory=dict)  # TENANTS
    tracing: dict[str, Any] | None = None  # TRACING: a tracing.TracingSpec's fields


@dataclass
class ServerSpec:
    """What the manager (or the standalone command) tells an endpoint server."""

    name: str
    module: str
    endpoints_dir: str
    host: str
    port: int | None  # None: no TCP port, the Unix socket only (TCP_PORT off)
    socket: str
    nr_workers: int
    worker_config: dict[str, Any]
    notify: str | None = None
    server_name: str = _default("SERVER_NAME")
    app_version: str = _default("APP_VERSION")
    stop_timeout: float = _default("STOP_TIMEOUT")
    # gunicorn's worker timeout while the model loads (the heartbeat starts after):
    # the endpoint's LOAD_TIMEOUT.
    load_timeout: float = DEFAULT_LOAD_TIMEOUT
    generation: int = 0
    # Failed loads in a row before this start: a failure is logged with its traceback
    # on the first attempt only.
    load_attempt: int = 0
    max_request_size: int = _default("MAX_REQUEST_SIZE")
    header_timeout: float = _default("HEADER_TIMEOUT")
    body_timeout: float = _default("BODY_TIMEOUT")
    jobs: dict[str, Any] | None = None  # queues.JobsSpec: consume this endpoint's async jobs
    # tenants.TenantsSpec, with API keys on: where the consumer charges the jobs it runs.
    tenants: dict[str, Any] | None = None
    sched_batch: bool = _default("SCHED_BATCH")
    server_timing: bool = _default("SERVER_TIMING")
    # GPU_MEMORY_MB: workers per GPU index (JSON keys), as the manager placed them.
    gpu_quota: dict[str, int] | None = None
    # MODEL_REPOSITORY: artifacts.models_spec (the repository and the box's cache).
    models: dict[str, Any] | None = None
    tracing: dict[str, Any] | None = None  # TRACING: a tracing.TracingSpec's fields


@dataclass
class SupervisorSpec:
    """What the manager tells the supervisor."""

    control: str
    sample_interval: float = _default("HEALTH_SAMPLE_INTERVAL")
    disk_path: str = "/"


@dataclass
class JobRunnerSpec:
    """What the manager tells the job runner: where the front is and how to call it.

    ``credential`` is the front's ``internal_token``: with API keys on, it lets the job
    runner call ``/run`` for a job's tenant (X-Customer-ID). It is made anew by each
    manager and travels only in the specs of the front and the job runner.
    """

    control: str
    front_url: str
    credential: str
    jobs: dict[str, Any]  # queues.JobsSpec
    threads: int = 4  # jobs of one endpoint run at once
    # tenants.TenantsSpec, with API keys on: where the runner charges the jobs it runs.
    tenants: dict[str, Any] | None = None
    stop_timeout: float = _default("STOP_TIMEOUT")


# -- the route table: written by the manager, read by every front process ----------------


class EndpointState(str, Enum):
    """An endpoint's state, as the manager keeps it and the route table publishes it."""

    STOPPED = "STOPPED"
    STARTING = "STARTING"
    READY = "READY"
    RESTARTING = "RESTARTING"
    FAILED = "FAILED"
    CRASHLOOP = "CRASHLOOP"
    STOPPING = "STOPPING"
    # A remote endpoint none of whose URLS answers its health probe.
    UNREACHABLE = "UNREACHABLE"
    # Scaled to zero (MIN_WORKERS 0): no worker runs; the next request starts them.
    IDLE = "IDLE"


# States a request may wait out (unless NO_STARTUP_WAIT): the endpoint is on its way up.
WAITABLE_STATES = frozenset({EndpointState.STARTING, EndpointState.RESTARTING})


@dataclass(frozen=True)
class Route:
    """What a front needs to send a request to one route (an endpoint or a version).

    ``record`` is the route as published (JSON): the forwarding code reads its sockets,
    remote URLs and stream timeouts from it; on the manager's side it is made by
    :meth:`to_json`.
    """

    name: str
    state: EndpointState
    timeout: float
    version: str | None = None
    breaker: dict[str, Any] | None = None
    socket: str | None = None
    workers: tuple[str, ...] = ()
    retry_on_crash: bool = False
    stream: dict[str, Any] = field(default_factory=dict)
    last_error: str | None = None
    retry_after: float = 1.0
    max_queue_depth: int | None = None
    max_queue_bytes: int | None = None
    max_in_flight: int = 0
    slots: int = 1  # FAIR_SLOTS: requests the fair queue lets each worker run at once
    # FAIR_BACKLOG_MS: the work a request handed to a worker may find queued there, which
    # the fair queue adds slots for on a fast endpoint (0: FAIR_SLOTS, fixed).
    backlog_ms: float = 0.0
    remote: dict[str, Any] | None = None  # a remote endpoint: urls, signature, api_key, down
    pipeline: dict[str, Any] | None = None  # a pipeline: its PIPELINE setting
    # MIN_WORKERS 0: the IDLE_TIMEOUT after which it scales to zero (None: never), and
    # how long a request to it waits while it starts again.
    idle_timeout: float | None = None
    cold_start_timeout: float = 0.0
    cache: dict[str, Any] | None = None  # CACHE, its defaults filled in
    record: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def judged(self) -> bool:
        """Whether the front keeps books on this route's outcomes (a breaker, or a
        version a rollout is judged on)."""
        return self.breaker is not None or self.version is not None

    def to_json(self) -> dict[str, Any]:
        """The route as the route file holds it."""
        out: dict[str, Any] = {}
        if self.remote is not None:
            out["remote"] = self.remote
        elif self.pipeline is not None:
            out["pipeline"] = self.pipeline
        out.update(version=self.version, breaker=self.breaker, state=self.state.value,
                   socket=self.socket, workers=list(self.workers), timeout=self.timeout,
                   retry_on_crash=self.retry_on_crash, stream=self.stream,
                   last_error=self.last_error, retry_after=self.retry_after,
                   max_queue_depth=self.max_queue_depth, max_queue_bytes=self.max_queue_bytes,
                   max_in_flight=self.max_in_flight, slots=self.slots, backlog_ms=self.backlog_ms,
                   idle_timeout=self.idle_timeout,
                   cold_start_timeout=self.cold_start_timeout, cache=self.cache)
        return out

    @classmethod
    def of(cls, name: str, record: dict[str, Any]) -> Route:
        """A route read from the route file."""
        return cls(name=name, state=EndpointState(record["state"]),
                   timeout=float(record["timeout"]), version=record.get("version"),
                   breaker=record.get("breaker"), socket=record.get("socket"),
                   workers=tuple(record.get("workers") or ()),
                   retry_on_crash=bool(record.get("retry_on_crash")),
                   stream=record.get("stream") or {}, last_error=record.get("last_error"),
                   retry_after=float(record.get("retry_after", 1)),
                   max_queue_depth=record.get("max_queue_depth"),
                   max_queue_bytes=record.get("max_queue_bytes"),
                   max_in_flight=int(record.get("max_in_flight") or 0),
                   slots=int(record.get("slots") or 1),
                   backlog_ms=float(record.get("backlog_ms") or 0),
                   remote=record.get("remote"), pipeline=record.get("pipeline"),
                   idle_timeout=record.get("idle_timeout"),
                   cold_start_timeout=float(record.get("cold_start_timeout") or 0),
                   cache=record.get("cache"), record=record)


@dataclass(frozen=True)
class TrafficPolicy:
    """How the requests of an endpoint with versions are shared among them."""

    versions: dict[str, str]  # label -> route name (``<endpoint>@<label>``)
    weights: dict[str, float]
    sticky_field: str | None = None
    shadow: dict[str, Any] | None = None  # the SHADOW setting
    rollout: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The policy as the route file holds it."""
        return {"versions": self.versions, "weights": self.weights,
                "sticky_field": self.sticky_field, "shadow": self.shadow,
                "rollout": self.rollout}

    @classmethod
    def of(cls, record: dict[str, Any]) -> TrafficPolicy:
        """A policy read from the route file (or handed over by the manager)."""
        return cls(versions=dict(record["versions"]), weights=dict(record["weights"]),
                   sticky_field=record.get("sticky_field"), shadow=record.get("shadow"),
                   rollout=record.get("rollout"))


@dataclass(frozen=True)
class RouteSnapshot:
    """The whole route table at one moment."""

    endpoints: dict[str, Route] = field(default_factory=dict)
    traffic: dict[str, TrafficPolicy] = field(default_factory=dict)
    no_startup_wait: bool = True
    ready_policy: str | list[str] = "all"
    written_at: float = 0.0
    record: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The table as the route file holds it."""
        return {"endpoints": {n: r.to_json() for n, r in self.endpoints.items()},
                "traffic": {n: p.to_json() for n, p in self.traffic.items()},
                "no_startup_wait": self.no_startup_wait, "ready_policy": self.ready_policy,
                "written_at": self.written_at}

    @classmethod
    def of(cls, record: dict[str, Any]) -> RouteSnapshot:
        """A table read from the route file."""
        return cls(endpoints={n: Route.of(n, r) for n, r in record["endpoints"].items()},
                   traffic={n: TrafficPolicy.of(p)
                            for n, p in (record.get("traffic") or {}).items()},
                   no_startup_wait=bool(record.get("no_startup_wait", True)),
                   ready_policy=record.get("ready_policy", "all"),
                   written_at=float(record.get("written_at", 0.0)), record=record)
