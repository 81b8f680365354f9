"""The gateway's top-level settings: every key outside ``CONFIG_ENDPOINTS``.

Apart from :mod:`~basic_inference_server.config` (which validates whole configurations
with this table and the endpoint settings) so that the process contracts take their
defaults from it without loading the endpoint settings' checks (``traffic/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .artifacts.repository import check_repository_url
from .queues import check_results_url, check_url
from .setting import Setting, at_least, check_port_or_null, check_workers
from .tenants.address_settings import check_anon_limit, check_proxies
from .tenants.jwt_settings import check_issuers
from .tenants.priorities import check_class_names, check_tenants
from .tracing import check_tracing

DEFAULT_GPU_MEM_PCT = 90


def redis_url_or_null(v: str | None) -> str | None:
    """Settings-table check of a Redis URL setting (TENANTS_REDIS, CACHE_REDIS)."""
    if v is None or v.startswith(("redis://", "rediss://", "unix://")):
        return None
    return "must be a redis://, rediss:// or unix:// URL"


def _check_gpu_pct(v: float | dict[str, Any]) -> str | None:
    """ALERT_GPU_MEM_PCT: a percentage, or GPU indices ("0", "1", ...) to percentages."""
    percent = at_least(0, 100)
    if not isinstance(v, dict):
        return percent(v)
    for key, pct in v.items():
        if not (key.isdigit() and int(key) < 1024):
            return f"keys must be GPU indices (\"0\" to \"1023\"), not {key[:20]!r}"
        if isinstance(pct, bool) or not isinstance(pct, (int, float)) or percent(pct):
            return f"GPU {key}: must be a percentage from 0 to 100"
    return None


def check_token(v: str | None) -> str | None:
    """What is wrong with a bearer token (None: nothing)."""
    if v is None:
        return None
    ok = 1 <= len(v) <= 1024 and v.isascii() and v.isprintable() and " " not in v
    return None if ok else "must be 1 to 1024 printable ASCII characters without spaces"


def _check_aliases(v: dict[str, Any]) -> str | None:
    """MODEL_ALIASES: names of up to 200 printable characters, each to a route's name."""
    for alias, target in v.items():
        if not (0 < len(alias) <= 200 and alias.isprintable()):
            return f"alias {alias[:20]!r}: 1 to 200 printable characters"
        if not isinstance(target, str) or not target:
            return f"alias {alias[:20]!r}: must name an endpoint or a version (endpoint@label)"
    return None


GATEWAY_SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in [
        Setting("CONFIG_ENDPOINTS", dict, {}, "Endpoints to serve: name -> endpoint settings."),
        Setting("DEFAULT_SERVER", (str, type(None)), None,
                "Endpoint listed first by /list_servers; requests still name a SIGNATURE."),
        Setting("NO_STARTUP_WAIT", bool, True,
                "true: /run to a starting endpoint answers 503 at once; "
                "false: it waits (up to TIMEOUT) for the endpoint to be ready."),
        Setting("READY_POLICY", (str, list), "all",
                "When /health/ready answers 200: `all` started endpoints READY, `any` one of "
                "them, or a list of the endpoints that must be READY (probes: see docs/scale-out.md).",
                lambda v: None if v in ("all", "any") or (isinstance(v, list) and v and all(
                    isinstance(x, str) and x for x in v))
                else 'must be "all", "any" or a non-empty list of endpoint names'),
        Setting("SERVER_NAME", str, "basic_inference_server",
                "Name of this box, reported as `server` in every response."),
        Setting("APP_VERSION", str, "0.0.0", "Version of your application, reported as `app_ver`."),
        Setting("FIRST_SERVER_PORT", (int, type(None)), None,
                "Port of the first endpoint server with TCP_PORT (null: gateway port + 1); 0 "
                "picks free ports.",
                check_port_or_null),
        Setting("GATEWAY_WORKERS", int, 2, "Worker processes of the gateway front.", check_workers),
        Setting("GATEWAY_THREADS", int, 32,
                "Threads per gateway worker for blocking work (management calls, job "
                "submission); requests waiting on endpoints hold none.", at_least(1, 10000)),
        Setting("SCHED_BATCH", bool, True,
                "Front and endpoint server workers run under Linux's SCHED_BATCH policy: a "
                "woken worker does not preempt a running one, so each process handles what "
                "is ready before the CPU switches, instead of one hop of a request at a time "
                "(less CPU per request through the gateway under load: see bench/README.md). "
                "false: the default policy."),
        Setting("MAX_REQUEST_SIZE", int, 64 * 1024 * 1024,
                "Largest accepted request body in bytes (413 above).", at_least(1, 1 << 40)),
        Setting("ADMIN_TOKEN", (str, type(None)), None,
                "Bearer token every management call must present (env BIS_ADMIN_TOKEN or "
                "BIS_ADMIN_TOKEN_FILE override it; with none, one is generated once into "
                "<cache>/admin_token and kept there: delete the file to make a new one).",
                check_token),
        Setting("INSECURE_NO_ADMIN_AUTH", bool, False,
                "Development only: management calls need no credential at all (a warning "
                "is logged at every start)."),
        Setting("METRICS_TOKEN", (str, type(None)), None,
                "Bearer token that reads /metrics and nothing else (a Prometheus scrape "
                "credential; the admin token reads /metrics too); `env:VAR` or `file:PATH` "
                "reads it from there.", check_token, secret_ref=True, secret=True),
        Setting("METRICS_TENANT_LABELS", bool, True,
                "/metrics names tenants in the per-tenant counters (the 20 with the most "
                "requests, then `other`); false sums those counters over tenants."),
        Setting("STOP_TIMEOUT", (int, float), 30,
                "Seconds a stopping process may take to finish in-flight work before it is killed.",
                at_least(0)),
        Setting("HEALTH_SAMPLE_INTERVAL", (int, float), 5,
                "Seconds between health samples (memory, disk, CPU, GPU) taken by the supervisor.",
                at_least(0.1)),
        Setting("NVML_RECORDING", (str, type(None)), None,
                "A JSON file of recorded NVML answers (the `RecordedNvml` format, "
                "basic_inference_server/health/gpu.py) that every process of the gateway reads "
                "instead of the GPU driver (it is passed on as BIS_NVML_RECORDING): health "
                "samples, GPU placement and the models' memory guards. For tests, dashboards "
                "and demos on a machine without a GPU.",
                lambda v: None if v is None or Path(v).is_file() else "no such file"),
        Setting("ALERT_MEM_AVAIL_PCT", (int, float), 15,
                "Alert when available system memory falls under this percentage.",
                at_least(0, 100)),
        Setting("ALERT_DISK_FREE_PCT", (int, float), 10,
                "Alert when free disk space falls under this percentage.", at_least(0, 100)),
        Setting("ALERT_GPU_MEM_PCT", (int, float, dict), DEFAULT_GPU_MEM_PCT,
                "Alert when a GPU's memory use rises over this percentage: one number for "
                "every GPU, or a map from GPU index to percent (`{\"0\": 80, \"1\": 95}`; "
                f"a GPU it does not list uses {DEFAULT_GPU_MEM_PCT}).", _check_gpu_pct),
        Setting("ALERT_RESTARTS", int, 3,
                "Alert when an endpoint restarts this many times within 10 minutes.",
                at_least(1, 1_000_000)),
        Setting("TRACING", (dict, type(None)), None,
                "OpenTelemetry traces, exported over OTLP/HTTP: {OTLP_URL, SAMPLE, SERVICE_NAME}. "
                "OTLP_URL: an OTLP/HTTP traces receiver (http://collector:4318/v1/traces); "
                "SAMPLE (default 0.1): the share of requests without a caller's "
                "traceparent that are traced (one with it follows its sampled flag); "
                "SERVICE_NAME: default SERVER_NAME. null: off "
                "(docs/tracing.md).", check_tracing),
        Setting("ACCESS_LOG", bool, True,
                "Log one line per /run request (endpoint, status, latency, worker)."),
        Setting("SERVER_TIMING", bool, False,
                "Add a `Server-Timing` header to /run answers: the gateway's stages (`gate`, "
                "`upstream`, `gateway`) and the endpoint server's (`queue`, `decode`, `pre`, "
                "`predict` or `batch`, `post`, `encode`, `server`), in milliseconds. Callers "
                "see it: leave it off where stage times should stay private."),
        Setting("ALLOWED_HOSTS", list, [],
                "Host names the management routes and the dashboard answer to, besides IP "
                "addresses, `localhost` and this machine's names (DNS rebinding guard); "
                "entries may be `*.domain` or `*`.",
                lambda v: None if all(isinstance(x, str) and x and x.isascii() and " " not in x
                                      for x in v) else "must be a list of host names"),
        Setting("MODEL_ALIASES", dict, {},
                "The OpenAI routes' `model` names besides the endpoints' own: alias -> "
                "endpoint or version (`chat@v2`); see docs/openai.md.",
                _check_aliases),
        # Async jobs (basic_inference_server/queues).
        Setting("QUEUE", str, "sqlite",
                "Job queue: `sqlite` (in _cache/), `sqlite:///path`, `redis://...`, `amqp://...` "
                "or `sqs://...`; `?prefix=` names its keys or queues; `env:VAR` or `file:PATH` "
                "reads the URL from there (keeps passwords out of the file).", check_url,
                secret_ref=True),
        Setting("MODEL_REPOSITORY", (str, type(None)), None,
                "Where the model versions endpoints name in MODEL live: a folder (a path or "
                "`file:///path`) or `s3://bucket[/prefix]` (`?endpoint_url=` for an "
                "S3-compatible server; credentials as `s3://KEY_ID:SECRET@...` or boto3's "
                "chain); `env:VAR` or `file:PATH` reads the URL from there. docs/models.md.",
                lambda v: None if v is None else check_repository_url(v), secret_ref=True,
                secret=True),
        Setting("MODEL_CACHE_MB", int, 20480,
                "Bound of the box's model cache (_cache/models/): past it, the versions no "
                "process uses are deleted, least recently used first.",
                at_least(1, 1 << 40)),
        Setting("RESULTS", (str, type(None)), None,
                "Where job status and results live: `sqlite...`, `redis://...` or "
                "`postgresql://...` (lasting, shared: docs/ledger.md; the `postgres` extra) "
                "(default: the queue's Redis, else SQLite in _cache/); `env:VAR` or `file:PATH` "
                "as for QUEUE.",
                lambda v: None if v is None else check_results_url(v), secret_ref=True),
        Setting("JOB_TTL", (int, float), 86400,
                "Seconds a finished job's result stays readable at /jobs/<id>.",
                at_least(1, 365 * 86400)),
        # The front's connections (wire/connection.py, wire/worker.py).
        Setting("HEADER_TIMEOUT", (int, float), 60,
                "Seconds a client has to send a request's headers (from connecting, or from the "
                "request's first byte on a kept-alive connection; nginx's "
                "client_header_timeout); then the connection is closed.", at_least(0.1, 3600)),
        Setting("BODY_TIMEOUT", (int, float), 60,
                "Seconds a client has to send a request's body once its headers are in.",
                at_least(0.1, 3600)),
        Setting("KEEPALIVE_TIMEOUT", (int, float), 30,
                "Seconds an idle kept-alive client connection stays open.", at_least(0.1, 3600)),
        Setting("MAX_CONNECTIONS", int, 10000,
                "Open client connections of the gateway (all front processes); past it a new "
                "one gets 503 too_many_connections.", at_least(1, 1_000_000)),
        Setting("TLS_CERT", (str, type(None)), None,
                "PEM certificate chain file: the gateway serves HTTPS (with TLS_KEY)."),
        Setting("TLS_KEY", (str, type(None)), None,
                "PEM private key file of TLS_CERT (omit when TLS_CERT holds the key)."),
        # Tenants (basic_inference_server/tenants, docs/tenants.md).
        Setting("API_KEYS", bool, False,
                "Data-plane requests (/run, /jobs) need an API key (created with POST /keys); "
                "the key's tenant reaches endpoints as X-Customer-ID."),
        Setting("ANON_LIMIT", (dict, type(None)), None,
                "With API_KEYS off: a token bucket per client address, {RATE, BURST} as a "
                "key's (RATE a number a second or text like '10/second'), exact across "
                "front processes (and gateways sharing TENANTS_REDIS); past it 429 with "
                "Retry-After. null: no limit.", check_anon_limit),
        Setting("TRUSTED_PROXIES", list, [],
                "Addresses or networks (CIDR) of the reverse proxies in front of the "
                "gateway: from them only, X-Forwarded-For names the client for ANON_LIMIT "
                "(read from the right, past every trusted proxy). []: the peer address is "
                "the client's, whatever the headers say.", check_proxies),
        Setting("JWT_ISSUERS", list, [],
                "Issuers whose bearer JWTs the gateway takes besides API keys (needs API_KEYS "
                "and the `jwt` extra): each {ISSUER, AUDIENCE, JWKS_URL or JWKS_FILE, "
                "ALGORITHMS, LEEWAY, JWKS_REFRESH, JWKS_MIN_REFRESH, TENANT_CLAIM, "
                "SCOPE_CLAIM, PLAN_CLAIM, PLANS} (docs/tenants.md, \"JWT bearer tokens\").",
                check_issuers),
        Setting("TENANTS_REDIS", (str, type(None)), None,
                "Redis URL holding API keys and rate-limit state, shared by several gateways "
                "(null: SQLite in the cache folder); `?prefix=` names its keys; `env:VAR` or `file:PATH` "
                "as for QUEUE.",
                redis_url_or_null, secret_ref=True),
        Setting("CACHE_REDIS", (str, type(None)), None,
                "Redis URL where the endpoints' answer caches (CACHE) keep their entries, "
                "shared by every front process and every gateway naming it, their bounds "
                "holding over all of them (null: each front process's memory); `?prefix=` "
                "names its keys; `env:VAR` or `file:PATH` as for QUEUE. It holds answers: "
                "keep it as private as the endpoints' callers.",
                redis_url_or_null, secret_ref=True, secret=True),
        Setting("LEDGER_POSTGRES", (str, type(None)), None,
                "PostgreSQL URL of the usage ledger and the audit trail, shared by every "
                "gateway that names it (needs API_KEYS and the `postgres` extra): each "
                "request is journaled under the cache folder before its answer goes out "
                "and shipped in batches (docs/ledger.md); `env:VAR` or `file:PATH` as for "
                "QUEUE.",
                lambda v: None if v is None or v.startswith(("postgresql://", "postgres://"))
                else "must be a postgresql:// or postgres:// URL", secret_ref=True, secret=True),
        # Fair sharing (gateway/fair_queue.py, docs/tenants.md "Priorities and fair queueing").
        Setting("FAIR_QUEUEING", bool, False,
                "The front holds requests for a busy endpoint and hands each freed worker "
                "slot to the next by class, then by tenant weight (start-time fair queueing "
                "over all front processes). false: requests go to the least busy worker at "
                "once and wait there in arrival order."),
        Setting("PRIORITY_CLASSES", list, ["interactive", "standard", "batch"],
                "Priority classes, highest first (1 to 8 names): a key's PRIORITY, a "
                "tenant's in TENANTS, an X-Priority header (which may only lower it) and "
                "a job's queue order name them.", check_class_names),
        Setting("DEFAULT_PRIORITY", str, "standard",
                "The class of a request whose key and tenant name none."),
        Setting("TENANTS", dict, {},
                "Per tenant (customer id): {PRIORITY, WEIGHT}; a key's own values win. "
                "WEIGHT (0.01 to 1000, default 1): the tenant's share among the busy "
                "tenants of its class.", check_tenants),
        Setting("TENANTS_FAIL_OPEN", bool, False,
                "When TENANTS_REDIS does not answer: false answers 503; true serves keys "
                "already cached, counts limits and quota charges in memory until it is back."),
    ]
}
