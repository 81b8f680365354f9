"""The start-up specs of the manager's children, built from the configuration."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..artifacts import models_spec
from ..config import ENDPOINT_SETTINGS, EndpointConfig, GatewayConfig, expand_versions, warn_near_misses
from ..contracts import FrontSpec, JobRunnerSpec, ServerSpec, SupervisorSpec, quota_to_json
from ..names import split_target
from ..redact import mask_url
from ..tracing import TracingSpec
from .state import Endpoint, State

SUPPORT_PATH = "/support_update_status"
# What the job runner needs of each endpoint it serves.
JOB_SETTINGS = ("MAX_ATTEMPTS", "RETRY_BACKOFF", "VISIBILITY_TIMEOUT", "TIMEOUT")


@dataclass
class Paths:
    """Where the manager's children find it and each other (the run folder's files)."""

    routes: str
    control: str
    notify: str
    endpoints_dir: str

    @classmethod
    def in_run_dir(cls, run_dir: Path, endpoints_dir: str | Path) -> Paths:
        """The run folder's files, and the endpoints' folder (absolute)."""
        return cls(routes=str(run_dir / "routes.json"), control=str(run_dir / "control.sock"),
                   notify=str(run_dir / "notify.sock"),
                   endpoints_dir=str(Path(endpoints_dir).resolve()))


def tracing_of(config: GatewayConfig) -> dict[str, Any] | None:
    """The processes' TRACING spec (None: off)."""
    spec = TracingSpec.of(config["TRACING"], config["SERVER_NAME"])
    return asdict(spec) if spec is not None else None


def front_spec(config: GatewayConfig, paths: Paths, admin_token: str | None,
               jobs: dict[str, Any], tenants: dict[str, Any],
               internal_token: str | None = None, cache_dir: str = "_cache") -> FrontSpec:
    """The front's start-up spec."""
    return FrontSpec(
        routes=paths.routes, control=paths.control, workers=config["GATEWAY_WORKERS"],
        threads=config["GATEWAY_THREADS"], sched_batch=config["SCHED_BATCH"],
        server_timing=config["SERVER_TIMING"],
        max_request_size=config["MAX_REQUEST_SIZE"],
        admin_token=admin_token, allowed_hosts=config["ALLOWED_HOSTS"],
        metrics_token=config["METRICS_TOKEN"],
        metrics_tenant_labels=config["METRICS_TENANT_LABELS"],
        server_name=config["SERVER_NAME"], app_version=config["APP_VERSION"],
        stop_timeout=config["STOP_TIMEOUT"], access_log=config["ACCESS_LOG"], jobs=jobs,
        header_timeout=config["HEADER_TIMEOUT"], body_timeout=config["BODY_TIMEOUT"],
        keepalive_timeout=config["KEEPALIVE_TIMEOUT"],
        max_connections=config["MAX_CONNECTIONS"], tls_cert=config["TLS_CERT"],
        tls_key=config["TLS_KEY"], tenants=tenants, endpoints_dir=paths.endpoints_dir,
        internal_token=internal_token, cache_dir=cache_dir,
        model_aliases=config["MODEL_ALIASES"], cache_redis=config["CACHE_REDIS"],
        anon_limit=config["ANON_LIMIT"], trusted_proxies=config["TRUSTED_PROXIES"],
        fair_queueing=config["FAIR_QUEUEING"], priority_classes=config["PRIORITY_CLASSES"],
        default_priority=config["DEFAULT_PRIORITY"], tenant_shares=config["TENANTS"],
        tracing=tracing_of(config))


def server_spec(config: GatewayConfig, paths: Paths, ep: Endpoint,
                jobs: dict[str, Any], tenants: dict[str, Any] | None = None,
                gpu_quota: dict[int, int] | None = None,
                cache_dir: str | Path = "_cache") -> ServerSpec:
    """An endpoint server's start-up spec (its listeners already open; ``gpu_quota``:
    its workers per GPU, placed by memory)."""
    assert ep.socket_path is not None
    return ServerSpec(
        name=ep.name, module=ep.config.module_name, endpoints_dir=paths.endpoints_dir,
        host=ep.config.settings["HOST"], port=ep.port, socket=ep.socket_path,
        nr_workers=ep.target_workers, worker_config=ep.config.worker_config(),
        notify=paths.notify, server_name=config["SERVER_NAME"],
        app_version=config["APP_VERSION"], stop_timeout=config["STOP_TIMEOUT"],
        generation=ep.generation, load_attempt=ep.failures, jobs=jobs,
        max_request_size=config["MAX_REQUEST_SIZE"],
        header_timeout=config["HEADER_TIMEOUT"], body_timeout=config["BODY_TIMEOUT"],
        tenants=tenants if config["API_KEYS"] else None, sched_batch=config["SCHED_BATCH"],
        server_timing=config["SERVER_TIMING"], load_timeout=ep.config.settings["LOAD_TIMEOUT"],
        gpu_quota=quota_to_json(gpu_quota),
        models=models_spec(config["MODEL_REPOSITORY"], cache_dir, config["MODEL_CACHE_MB"]),
        tracing=tracing_of(config))


def supervisor_spec(config: GatewayConfig, paths: Paths, disk_path: str) -> SupervisorSpec:
    """The supervisor's start-up spec."""
    return SupervisorSpec(control=paths.control,
                          sample_interval=config["HEALTH_SAMPLE_INTERVAL"], disk_path=disk_path)


def front_url(host: str, port: int, tls: bool) -> str:
    """The front's own address, as a client on this box reaches it."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


def jobrunner_spec(config: GatewayConfig, paths: Paths, jobs: dict[str, Any], url: str,
                   credential: str, tenants: dict[str, Any]) -> JobRunnerSpec:
    """The job runner's start-up spec."""
    return JobRunnerSpec(control=paths.control, front_url=url, credential=credential,
                         jobs=jobs, stop_timeout=config["STOP_TIMEOUT"],
                         tenants=tenants if config["API_KEYS"] else None)


def job_targets(endpoints: dict[str, Endpoint],
                sections: dict[str, EndpointConfig]) -> dict[str, dict[str, Any]]:
    """The endpoints whose jobs the job runner runs, with the settings it needs: READY
    pipelines and remote endpoints (no server of their own), and endpoints with VERSIONS
    (``sections``) one of whose versions is READY (their jobs follow the traffic policy
    when they run; a job pinned to one version is that version's server's)."""
    out = {name: {key: ep.config.settings[key] for key in JOB_SETTINGS}
           for name, ep in endpoints.items() if ep.is_virtual and ep.state == State.READY}
    ready = {split_target(name)[0] for name, ep in endpoints.items() if ep.state == State.READY}
    out.update({name: {key: cfg.settings[key] for key in JOB_SETTINGS}
                for name, cfg in sections.items() if name in ready})
    return out


def support_payload(ep: Endpoint, gateway_address: str, gateway_port: int) -> dict[str, Any]:
    """The ``--config_endpoint`` argument of a support script.

    ``gateway_address`` is where processes of this box reach the front (loopback for a
    wildcard HOST); the original's scripts build ``http://SERVER:SERVER_PORT/...``, so
    an IPv6 address goes in brackets. The script's command line is readable by every
    local user (and the original's scripts print it): URLs go there with their
    passwords masked.
    """
    settings = {k: mask_url(v) if ENDPOINT_SETTINGS[k].secret_ref and isinstance(v, str)
                else v for k, v in ep.config.settings.items()}
    host = f"[{gateway_address}]" if ":" in gateway_address else gateway_address
    return {**settings, **ep.config.extra, "SERVER": host, "SERVER_PORT": gateway_port,
            "SERVER_PATH": SUPPORT_PATH, "SUPPORT_NAME": ep.name}


def support_launcher(gateway_address: str, gateway_port: int, tls_cert: str | None) -> tuple[str, ...]:
    """The launcher's options: with TLS on, the script's plain HTTP to the front is
    carried over TLS (see :mod:`..support.launch`)."""
    if not tls_cert:
        return ()
    host = f"[{gateway_address}]" if ":" in gateway_address else gateway_address
    return ("--tls-cert", str(Path(tls_cert).resolve()), "--gateway", f"{host}:{gateway_port}")


def warn_unchecked_keys(cfg: EndpointConfig) -> None:
    """Near misses among the keys of a section whose code the manager never sees imported
    (support scripts, remote and pipeline endpoints: the settings only). An endpoint
    server's worker checks its own against the settings and its ``_CONFIG``."""
    if cfg.is_support or cfg.settings["URLS"] or cfg.settings["PIPELINE"]:
        warn_near_misses(cfg.name, cfg.extra)


def configured_endpoints(config: GatewayConfig) -> dict[str, Endpoint]:
    """The configuration's endpoints, by name; an endpoint with VERSIONS runs one server
    per version ("name@label"). Near misses among unchecked keys are warned of."""
    for cfg in config.endpoints.values():
        warn_unchecked_keys(cfg)
    return {name: Endpoint(config=cfg, target_workers=cfg.settings["NR_WORKERS"])
            for section in config.endpoints.values()
            for name, cfg in expand_versions(section, config.source).items()}
