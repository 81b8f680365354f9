"""Gateway configuration: one declarative table of settings, validated at start.

Every key the framework reads is declared once in :data:`GATEWAY_SETTINGS` (the top
level, in :mod:`~basic_inference_server.gateway_settings`) or :data:`ENDPOINT_SETTINGS`
with its type, default, check and one-line description.
The table in docs/configuration.md is generated from these tables (``python -m
basic_inference_server.config``) and a test keeps the two in step.

Endpoint sections may also carry the endpoint's own keys (those of its ``_CONFIG``);
they reach the worker as ``self.cfg_<lower key>``. An unknown key is never refused (it
may be worker configuration), but one that looks like a misspelling of a setting or of
a ``_CONFIG`` key is logged as a warning with the likely name (:func:`near_misses`).
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts.manifest import ModelRef, ModelRefError
from .cache_settings import CACHE_SETTINGS
from .errors import ConfigError
from .gateway_settings import GATEWAY_SETTINGS, check_token
from .hosts import NO_HOST, check_host
from .names import NAME_RULE_TEXT, VERSION_SEP, is_name
from .refs import resolve_ref
from .setting import (
    DEFAULT_LOAD_TIMEOUT,
    MAX_WORKERS,
    Setting,
    at_least,
    check_name,
    check_port_or_null,
    check_workers,
)
from .stream_settings import STREAM_SETTINGS
from .tenants.priorities import check_priorities
from .traffic.settings import POLICY_KEYS, TRAFFIC_SETTINGS, check_policy

# Where the admin token may come from besides the ADMIN_TOKEN setting (names of
# environment variables). Children never inherit them.
ADMIN_TOKEN_ENV = "BIS_ADMIN_TOKEN"
ADMIN_TOKEN_FILE_ENV = "BIS_ADMIN_TOKEN_FILE"
SECRET_ENV = (ADMIN_TOKEN_ENV, ADMIN_TOKEN_FILE_ENV)

log = logging.getLogger(__name__)


def _positive_or_null(v: float | None) -> str | None:
    return None if v is None or (math.isfinite(v) and 0 < v <= 1e12) else "must be > 0"


def _str_list(v: list) -> str | None:
    return None if all(isinstance(x, str) for x in v) else "must be a list of strings"


def _check_model_ref(v: str | None) -> str | None:
    """Settings-table check of ``MODEL``: null or ``<model>/<version>``."""
    if v is None:
        return None
    try:
        ModelRef.parse(v)
    except ModelRefError as exc:
        return str(exc)
    return None


def _model_specs(v: dict) -> str | None:
    return None if all(isinstance(s, dict) for s in v.values()) else "must map model names to objects"


def _customer_models(v: dict) -> str | None:
    ok = all(isinstance(ms, list) and not _str_list(ms) for ms in v.values())
    return None if ok else "must map customer ids to lists of model names"


ENDPOINT_SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in [
        Setting("NR_WORKERS", int, 1,
                f"Worker processes of the endpoint server (1 to {MAX_WORKERS}).", check_workers),
        Setting("HOST", str, "127.0.0.1",
                "Address of the endpoint server's TCP port, with TCP_PORT (loopback by default; "
                "another address is logged as a warning); NO_HOST makes it a support process.",
                check_host),
        Setting("PORT", (int, type(None)), None,
                "Port of the endpoint server, with TCP_PORT (default: assigned from "
                "FIRST_SERVER_PORT).", check_port_or_null),
        Setting("TCP_PORT", bool, False,
                "The endpoint server also listens on HOST:PORT over TCP. The gateway reaches "
                "its servers over Unix sockets; this port has none of its checks (API key, "
                "scopes, quotas, admin token): any local user, and with another HOST anyone "
                "who reaches it, calls the endpoint directly."),
        Setting("DISABLED", bool, False, "Configured but not started (start it with /start_server)."),
        Setting("SERVER_CLASS", (str, type(None)), None,
                "Endpoint file (endpoints/<SERVER_CLASS>.py) to run, when it differs from the name.",
                check_name),
        Setting("DESCRIPTION", str, "", "Free text shown by /list_servers."),
        Setting("PING_INTERVAL", (int, float), 5,
                "Seconds between the supervisor's health probes of each worker.", at_least(0.1)),
        Setting("PING_TIMEOUT", (int, float), 2,
                "Seconds a worker has to answer a probe (at most PING_INTERVAL).", at_least(0.05)),
        Setting("PING_MISSES", int, 2,
                "Probes missed in a row before a worker (or, all missing, the server) is killed "
                "and replaced.", at_least(1, 1000)),
        Setting("RETRY_ON_CRASH", bool, False,
                "Retry a request once on another worker when its worker dies running it "
                "(only for endpoints whose requests are safe to run twice)."),
        Setting("TIMEOUT", (int, float), 60,
                "Seconds the gateway waits for an answer before replying 504.", at_least(0.01)),
        Setting("LOAD_TIMEOUT", (int, float), DEFAULT_LOAD_TIMEOUT,
                "Seconds a worker may take to start: import the endpoint file and run "
                "_load_model; past it the worker is killed and its start counts as failed "
                "(restarted with backoff, like a crash).", at_least(5, 24 * 3600)),
        # Scale to zero
        Setting("MIN_WORKERS", (int, type(None)), None,
                "0: the endpoint stops its workers after IDLE_TIMEOUT seconds without a "
                "request or a job (state IDLE), and the next request starts them again; it "
                "is held until they are READY, up to COLD_START_TIMEOUT. Null: NR_WORKERS "
                "run all the time.",
                lambda v: None if v in (None, 0) and not isinstance(v, bool)
                else "must be 0 (scale to zero when idle) or null"),
        Setting("IDLE_TIMEOUT", (int, float), 300,
                "With MIN_WORKERS 0: seconds without a request in flight, a new request or "
                "a job waiting or running, after which the workers stop.",
                at_least(0.5, 7 * 24 * 3600)),
        Setting("COLD_START_TIMEOUT", (int, float), 120,
                "With MIN_WORKERS 0: seconds a request to the idle endpoint is held while "
                "its workers start (whatever NO_STARTUP_WAIT says); past it, 503.",
                at_least(1, 24 * 3600)),
        Setting("MODEL", (str, type(None)), None,
                "The model version the workers load, `<model>/<version>` of MODEL_REPOSITORY: "
                "downloaded once per box, verified against its manifest's sha256 sums, and "
                "found at `self.model_path` in _load_model. A missing or corrupt artifact "
                "fails the load (model_integrity).", _check_model_ref),
        Setting("BASE64_KEYS", list, [],
                "Input fields that arrive base64-encoded; decoded to bytes before _pre_process.",
                _str_list),
        Setting("BASE64_OUTPUTS", list, [],
                "Output fields holding bytes; base64-encoded in the response.", _str_list),
        # Async jobs of this endpoint.
        Setting("MAX_QUEUE_DEPTH", int, 10000,
                "Jobs waiting or running beyond which a submit answers 429.",
                at_least(1, 1 << 40)),
        Setting("MAX_QUEUE_BYTES", int, 1024 * 1024 * 1024,
                "Bytes of job bodies waiting or running beyond which a submit answers 429.",
                at_least(1, 1 << 50)),
        Setting("MAX_IN_FLIGHT", (int, type(None)), None,
                "Requests the gateway lets wait on or run in this endpoint at once; past it "
                "503 overloaded. null: live workers x MAX_BATCH_SIZE x 32.",
                lambda v: None if v is None else at_least(1, 1_000_000)(v)),
        Setting("FAIR_SLOTS", (int, type(None)), None,
                "With FAIR_QUEUEING: requests the front lets each worker run at once, the "
                "rest waiting in the front's fair queue. null: MAX_SEQUENCES when the "
                "section sets it (a generative endpoint), else MAX_BATCH_SIZE.",
                lambda v: None if v is None else at_least(1, 100_000)(v)),
        Setting("FAIR_BACKLOG_MS", (int, float), 5.0,
                "With FAIR_QUEUEING: the most work, in ms of the endpoint's own time, that a "
                "request handed to a worker may find queued before it there. The front "
                "measures a request's service time s from the answers and lets each worker "
                "run FAIR_SLOTS + floor(FAIR_BACKLOG_MS / s) requests at once (64 at most, "
                "or FAIR_SLOTS if more): a fast endpoint's workers find their next request "
                "at hand, a 20 ms one's run FAIR_SLOTS. 0: FAIR_SLOTS, fixed.",
                at_least(0, 1000)),
        Setting("MAX_ATTEMPTS", int, 3,
                "Runs of a failing job before it goes to the dead-letter queue.",
                at_least(1, 1000)),
        Setting("RETRY_BACKOFF", (int, float), 1,
                "Seconds before the first retry of a failed job; doubles each time, up to 60.",
                at_least(0)),
        Setting("VISIBILITY_TIMEOUT", (int, float), 300,
                "Seconds a claimed job stays hidden; if its worker dies, another takes it after "
                "that. Longer than the slowest job.", at_least(0.1)),
        # Model manager (basic_inference_server/models/)
        Setting("MODELS", dict, {},
                "Models the endpoint may load: name -> spec handed to the worker's _build_model "
                "(`path` recorded, `memory_mb` expected size). Also the allow-list of a request's "
                "`models` field.", _model_specs),
        Setting("REQUIRED_MODELS", list, [],
                "Models every request holds while it runs (besides MODEL_* environment "
                "variables, CUSTOMER_MODELS and the request's `models`).", _str_list),
        Setting("CUSTOMER_MODELS", dict, {},
                "X-Customer-ID header value -> models that customer's requests hold.", _customer_models),
        Setting("PRELOAD_MODELS", list, [],
                "Models loaded at start and kept (a reference held) until the worker stops.",
                _str_list),
        Setting("MODEL_STATE_URL", (str, type(None)), None,
                "Redis URL sharing model records (ref counts, holders, leases) across workers, "
                "servers and hosts; null keeps them in each worker process; `env:VAR` or "
                "`file:PATH` reads the URL from there.", secret_ref=True),
        Setting("MODEL_STATE_PREFIX", str, "",
                "Prefix of the model manager's Redis keys (model_info_<name>, ...)."),
        Setting("MODEL_MEMORY_THRESHOLD", (int, float), 0.8,
                "Fraction of device memory models may fill; above it idle models are unloaded, "
                "least recently used first.", lambda v: None if 0 < v <= 1 else "must be in (0, 1]"),
        Setting("MODEL_MEMORY_BUDGET_MB", (int, float, type(None)), None,
                "CPU models: memory budget of one worker's models; null: the GPU when one is "
                "visible, else the machine's RAM.", _positive_or_null),
        Setting("MODEL_LOAD_WAIT", (int, float), 0,
                "Seconds a load that does not fit waits (first come, first served) for references "
                "to be released; 0 answers 429 at once.", at_least(0)),
        Setting("MODEL_LEASE", (int, float), 30,
                "Seconds a reference in MODEL_STATE_URL outlives its holder's last renewal.",
                at_least(0.1)),
        Setting("MODEL_IDLE_UNLOAD", (int, float, type(None)), None,
                "Unload models unreferenced for this many seconds (checked periodically); "
                "null: never.", _positive_or_null),
        Setting("MODEL_THRASH_LIMIT", int, 10,
                "Alert when a model is loaded or unloaded more than this many times in "
                "MODEL_THRASH_WINDOW.", at_least(1, 1_000_000)),
        Setting("MODEL_THRASH_WINDOW", (int, float), 300, "Seconds of the thrash alert's window.",
                at_least(1)),
        # Dynamic batching (server/batching.py)
        Setting("MAX_BATCH_SIZE", int, 1,
                "Requests grouped into one _predict_batch call; 1 turns batching off.",
                at_least(1, 100_000)),
        Setting("MAX_BATCH_DELAY_MS", (int, float), 5,
                "Milliseconds a batch waits for more requests after its first.", at_least(0)),
        # Device placement
        Setting("GPUS", (list, type(None)), None,
                "GPU indices the workers are spread over (worker i -> GPUS[i mod n]); [] runs on "
                "the CPU; null leaves every GPU visible. With GPU_MEMORY_MB, the GPUs the "
                "workers are placed on by free memory (null: every GPU).",
                lambda v: None if v is None or all(
                    isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1024 for x in v)
                else "must be a list of GPU indices"),
        Setting("GPU_MEMORY_MB", (int, float, type(None)), None,
                "GPU memory one worker needs, in MiB: each worker is placed on the GPU with "
                "the most free memory that fits it (counting the workers already placed "
                "there and still loading); a worker that fits nowhere is refused (429 "
                "models_unavailable). Null: GPUS round-robin.",
                lambda v: None if v is None else at_least(1, 1 << 30)(v)),
        Setting("GPU_MEMORY_CAP", bool, False,
                "With GPU_MEMORY_MB: each worker caps its own PyTorch CUDA allocations at "
                "GPU_MEMORY_MB (torch.cuda.set_per_process_memory_fraction), so a worker "
                "that outgrows its declared need fails alone instead of starving its "
                "neighbours."),
    ] + TRAFFIC_SETTINGS + STREAM_SETTINGS + CACHE_SETTINGS
}


@dataclass
class EndpointConfig:
    """A validated endpoint section: framework settings plus the endpoint's own keys."""

    name: str
    settings: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    given: frozenset[str] = frozenset()

    @property
    def is_support(self) -> bool:
        """Whether the endpoint is a support process (``HOST`` is ``NO_HOST``): no server."""
        return self.settings["HOST"] == NO_HOST

    @property
    def module_name(self) -> str:
        """The endpoint file's name: ``SERVER_CLASS`` or the endpoint's own."""
        return self.settings["SERVER_CLASS"] or self.name

    def worker_config(self) -> dict[str, Any]:
        """What the endpoint section says explicitly: it overrides the endpoint's ``_CONFIG``.

        Framework defaults are not included, so a framework key the worker reads
        (``BASE64_KEYS``, ``BASE64_OUTPUTS``) may also come from ``_CONFIG``.
        """
        return {**{k: self.settings[k] for k in self.given}, **self.extra}


@dataclass
class GatewayConfig:
    """The whole validated configuration."""

    settings: dict[str, Any]
    endpoints: dict[str, EndpointConfig]
    source: str = "<defaults>"

    def __getitem__(self, key: str) -> Any:
        return self.settings[key]

    def admin_token(self) -> str | None:
        """The configured token: env BIS_ADMIN_TOKEN, the file BIS_ADMIN_TOKEN_FILE names,
        then ADMIN_TOKEN; None when none is set."""
        token = os.environ.get(ADMIN_TOKEN_ENV)
        path = os.environ.get(ADMIN_TOKEN_FILE_ENV)
        if not token and path:
            token = resolve_ref(f"file:{path}", ADMIN_TOKEN_FILE_ENV)
        token = token or self.settings["ADMIN_TOKEN"]
        if token is not None:
            problem = check_token(token)
            if problem:
                raise ConfigError(f"the admin token {problem}")
        return token


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def near_misses(section: Mapping[str, Any], own: Mapping[str, Any] | None = None) -> list[str]:
    """Keys of an endpoint section that are neither a setting nor a key of the endpoint's
    ``_CONFIG`` (``own``) but look like a misspelling of one (case ignored), each with
    the likely name: what a warning should say. Such keys still reach the worker."""
    known = {k.upper(): f"{k} (a setting)" for k in ENDPOINT_SETTINGS}
    known.update({k.upper(): f"{k} (a key of its _CONFIG)" for k in own or {} if isinstance(k, str)})
    out = []
    for key in section:
        if key in ENDPOINT_SETTINGS or key in (own or {}):
            continue
        close = difflib.get_close_matches(str(key).upper(), list(known), n=1, cutoff=0.8)
        if close:
            out.append(f"unknown key {key}: did you mean {known[close[0]]}? It is passed to "
                       f"the worker as it is")
    return out


def warn_near_misses(name: str, section: Mapping[str, Any],
                     own: Mapping[str, Any] | None = None) -> None:
    """Log :func:`near_misses` of endpoint ``name``'s section as warnings."""
    for message in near_misses(section, own):
        log.warning("endpoint %s: %s", name, message)


def _check_min_workers(settings: dict[str, Any]) -> str | None:
    """MIN_WORKERS 0 stops an endpoint server's workers: others have none."""
    if settings["MIN_WORKERS"] == 0 and (settings["URLS"] or settings["PIPELINE"]
                                         or settings["HOST"] == "NO_HOST"):
        return ("MIN_WORKERS 0 scales an endpoint server's workers to zero; remote "
                "endpoints, pipelines and support processes have none")
    return None


def _check_gpu_memory(settings: dict[str, Any]) -> str | None:
    """GPU_MEMORY_MB places workers on GPUs: GPUS [] (the CPU) contradicts it."""
    if settings["GPU_MEMORY_MB"] is not None and settings["GPUS"] == []:
        return "GPU_MEMORY_MB places workers on GPUs, but GPUS [] runs them on the CPU"
    if settings["GPU_MEMORY_CAP"] and settings["GPU_MEMORY_MB"] is None:
        return "GPU_MEMORY_CAP caps a worker at GPU_MEMORY_MB: set GPU_MEMORY_MB too"
    return None


def parse_endpoint(name: str, raw: Any, where: str, refs: bool = True) -> EndpointConfig:
    """Validate one endpoint section (``refs``: see :meth:`Setting.validate`)."""
    if not is_name(name):
        raise ConfigError(f"{where}: endpoint name {name!r} must be {NAME_RULE_TEXT}")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be an object, got {type(raw).__name__}")
    settings: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in raw.items():
        spec = ENDPOINT_SETTINGS.get(key)
        if spec is not None:
            settings[key] = spec.validate(value, where, refs)
            continue
        extra[key] = value  # the worker's own (near misses: see warn_near_misses)
    given = frozenset(settings)
    for key, spec in ENDPOINT_SETTINGS.items():
        settings.setdefault(key, spec.default)
    problem = check_policy(settings) or _check_gpu_memory(settings) or _check_min_workers(settings)
    if problem:
        raise ConfigError(f"{where}: {problem}")
    return EndpointConfig(name=name, settings=settings, extra=extra, given=given)


def expand_versions(cfg: EndpointConfig, where: str = "config") -> dict[str, EndpointConfig]:
    """The endpoints a section runs: itself, or one per version (raises ConfigError).

    Each version runs as its own server named ``<endpoint>@<label>``: the section's
    settings and keys, then the version's overrides. The section's traffic keys
    (``POLICY_KEYS``) describe the endpoint as a whole and stay with it.
    """
    versions = cfg.settings["VERSIONS"]
    if not versions:
        return {cfg.name: cfg}
    out: dict[str, EndpointConfig] = {}
    for label, overrides in versions.items():
        part = parse_endpoint(cfg.name, overrides, f"{where}: {cfg.name}.VERSIONS.{label}")
        settings = {**cfg.settings, **{k: part.settings[k] for k in part.given}}
        # A version runs the section's file unless it names its own.
        settings["SERVER_CLASS"] = part.settings["SERVER_CLASS"] or cfg.module_name
        for key in POLICY_KEYS:
            settings[key] = ENDPOINT_SETTINGS[key].default
        given = (cfg.given | part.given | {"SERVER_CLASS"}) - set(POLICY_KEYS)
        name = f"{cfg.name}{VERSION_SEP}{label}"
        out[name] = EndpointConfig(name=name, settings=settings,
                                   extra={**cfg.extra, **part.extra}, given=frozenset(given))
    return out


def endpoint_defaults() -> dict[str, Any]:
    """Framework defaults of every endpoint setting (under ``_CONFIG`` in a worker)."""
    return {key: spec.default for key, spec in ENDPOINT_SETTINGS.items()}


def parse_config(raw: Any, source: str = "<config>") -> GatewayConfig:
    """Validate a decoded configuration object; raises :class:`ConfigError`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the configuration must be a JSON object")
    settings: dict[str, Any] = {}
    for key, value in raw.items():
        spec = GATEWAY_SETTINGS.get(key)
        if spec is None:
            raise ConfigError(f"{source}: unknown key {key}{_suggest(key, list(GATEWAY_SETTINGS))}")
        settings[key] = spec.validate(value, source)
    for key, spec in GATEWAY_SETTINGS.items():
        settings.setdefault(key, spec.default)
    endpoints = {
        name: parse_endpoint(name, section, f"{source}: CONFIG_ENDPOINTS.{name}")
        for name, section in settings["CONFIG_ENDPOINTS"].items()
    }
    named = [n for n, cfg in endpoints.items() if cfg.settings["MODEL"] or any(
        "MODEL" in v for v in (cfg.settings["VERSIONS"] or {}).values() if isinstance(v, dict))]
    if named and not settings["MODEL_REPOSITORY"]:
        raise ConfigError(f"{source}: {', '.join(sorted(named))} name a MODEL but there is no "
                          f"MODEL_REPOSITORY to find it in")
    if problem := check_priorities(settings):
        raise ConfigError(f"{source}: {problem}")
    default = settings["DEFAULT_SERVER"]
    if default is not None and default not in endpoints:
        raise ConfigError(f"{source}: DEFAULT_SERVER {default!r} is not in CONFIG_ENDPOINTS")
    return GatewayConfig(settings=settings, endpoints=endpoints, source=source)


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a JSON configuration file.

    A syntax error is reported with its line and column; a missing file is an error.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    return parse_config(raw, str(path))


def file_section(source: str, name: str) -> dict[str, Any] | None:
    """The section of endpoint ``name`` in the configuration file ``source`` as it is
    now (the operator may have added it since the start); None when ``source`` is not
    a file or has no such section. A file that no longer parses is a ConfigError."""
    path = Path(source)
    if not path.is_file():
        return None
    raw = load_config(path).settings["CONFIG_ENDPOINTS"].get(name)
    return dict(raw) if isinstance(raw, dict) else None


def settings_table_markdown() -> str:
    """The configuration table of docs/configuration.md, generated from the settings tables."""

    def rows(table: dict[str, Setting]) -> list[str]:
        out = []
        for s in table.values():
            kinds = s.kind if isinstance(s.kind, tuple) else (s.kind,)
            typ = " / ".join("null" if k is type(None) else k.__name__ for k in kinds)
            out.append(f"| `{s.name}` | {typ} | `{json.dumps(s.default)}` | {s.desc} |")
        return out

    head = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    return "\n".join(
        ["Top level:", "", *head, *rows(GATEWAY_SETTINGS), "",
         "Per endpoint (inside `CONFIG_ENDPOINTS.<name>`):", "", *head, *rows(ENDPOINT_SETTINGS)]
    )


if __name__ == "__main__":
    print(settings_table_markdown())
