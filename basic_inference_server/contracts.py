"""What the processes of one gateway tell each other: start-up specs and event names.

The manager builds a spec, :func:`~basic_inference_server.manager.children.spawn` sends
it as JSON, and the child rebuilds the same dataclass from it. A process package
(gateway, server, manager, supervisor, support, jobrunner) imports another's contract from here,
never from that package. Defaults come from the settings table, so that a spec built
without a key means what the configuration's default means.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from .config import GATEWAY_SETTINGS

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


def _default(key: str) -> Any:
    return GATEWAY_SETTINGS[key].default


class Event(str, Enum):
    """Datagrams of the notify socket (endpoint servers and workers to the manager)."""

    WORKER_READY = "worker_ready"  # pid, slot, socket, generation
    WORKER_EXIT = "worker_exit"  # pid, generation
    NWORKERS = "nworkers"  # value, generation: gunicorn's worker count changed
    LOAD_FAILED = "load_failed"  # pid, error, generation
    NOTIFICATION = "notification"  # worker_id, notif, msg, info, time (FlaskWorker)


@dataclass
class FrontSpec:
    """What the manager tells the gateway front."""

    routes: str
    control: str
    workers: int = _default("GATEWAY_WORKERS")
    threads: int = _default("GATEWAY_THREADS")
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
    # gunicorn's worker timeout while the model loads (the heartbeat starts after).
    load_timeout: float = 300
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
