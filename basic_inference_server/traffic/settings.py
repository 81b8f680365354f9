"""The endpoint settings of traffic management, registered into the endpoint table."""

from __future__ import annotations

import math
from typing import Any

from ..names import NAME_RULE_TEXT, is_name
from ..setting import Setting
from .breaker import validate_breaker
from .compare import validate_shadow
from .pipeline import validate_pipeline
from .remote import validate_api_key, validate_signature, validate_urls

# Keys of an endpoint section that describe its traffic as a whole: a version's
# overrides may not set them, and they do not reach the versions' workers.
POLICY_KEYS = ("VERSIONS", "TRAFFIC", "STICKY_FIELD", "SHADOW")
# Keys that change what an endpoint is: set in the configuration file, not at runtime.
TRAFFIC_KEYS = (*POLICY_KEYS, "URLS", "PIPELINE")


def _versions(v: dict[str, Any]) -> str | None:
    for label, overrides in v.items():
        if not is_name(label):
            return f"labels must be {NAME_RULE_TEXT} ({label!r} is not)"
        if not isinstance(overrides, dict):
            return f"must map each version label to an object of settings ({label!r} does not)"
        clash = [k for k in overrides if k in POLICY_KEYS]
        if clash:
            return f"version {label!r} may not set {', '.join(clash)} (they apply to all versions)"
    return None


def check_weights(v: Any) -> str | None:
    """Weights: version label -> a number from 0 to 100, at least one of them above 0."""
    if not isinstance(v, dict) or not v:
        return "must map version labels to weights"
    for label, weight in v.items():
        if not is_name(label):
            return f"labels must be {NAME_RULE_TEXT} ({label!r} is not)"
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                or not math.isfinite(weight) or not 0 <= weight <= 100:
            return f"weights must be numbers from 0 to 100 ({label!r} has {weight!r})"
    if not any(w > 0 for w in v.values()):
        return "must give at least one version a weight above 0"
    return None


def _field(v: str | None) -> str | None:
    return None if v is None or 1 <= len(v) <= 64 else "must be a field name of 1 to 64 characters"


def _object_or_null(v: Any) -> str | None:
    return None if v is None or isinstance(v, dict) else "must be an object or null"


TRAFFIC_SETTINGS: list[Setting] = [
    Setting("VERSIONS", dict, {},
            "Versions served side by side: label -> settings overriding the section's "
            "(e.g. SERVER_CLASS, NR_WORKERS); each runs its own server, addressed as "
            "`name@label` (docs/traffic.md).", _versions),
    Setting("TRAFFIC", dict, {},
            "Initial weights of VERSIONS: label -> 0..100 (default: all to the first); "
            "changed at runtime with POST /traffic and kept across restarts.",
            lambda v: None if not v else check_weights(v)),
    Setting("STICKY_FIELD", (str, type(None)), None,
            "Body field whose value keeps a caller on one version (null: the tenant, from "
            "the API key or X-Customer-ID; no tenant: by weight at random).", _field),
    Setting("SHADOW", (dict, type(None)), None,
            "Mirror a fraction of requests to a shadow version and compare the answers "
            "(docs/traffic.md).", validate_shadow),
    Setting("BREAKER", (dict, type(None)), None,
            "Circuit breaker of the endpoint (of each version): null turns it off; else "
            "{CONSECUTIVE_ERRORS: 5, ERROR_RATE: 0.5, MIN_REQUESTS: 20, WINDOW: 10, "
            "OPEN_SECONDS: 5, MAX_OPEN_SECONDS: 300, HALF_OPEN_SUCCESSES: 5}, keys left out "
            "taking these defaults (docs/traffic.md).", validate_breaker),
    Setting("URLS", list, [],
            "A remote endpoint: base URLs of servers elsewhere (`http://host:port`), "
            "balanced; nothing is started here (docs/remote.md).", validate_urls, secret=True),
    Setting("REMOTE_SIGNATURE", (str, type(None)), None,
            "SIGNATURE of the endpoint at the remote, `name` or `name@version` (null: this "
            "endpoint's name, without a version label).", validate_signature),
    Setting("REMOTE_API_KEY", (str, type(None)), None,
            "Credential sent to the remote as a bearer token: `env:VAR` or `file:PATH`, "
            "read by the front (docs/remote.md).", validate_api_key, secret=True),
    Setting("PIPELINE", (dict, type(None)), None,
            "A pipeline endpoint: steps calling other endpoints (docs/pipelines.md).",
            validate_pipeline),
]


def check_policy(settings: dict[str, Any]) -> str | None:
    """What is wrong between an endpoint section's traffic settings, or None."""
    versions = settings["VERSIONS"]
    if settings["URLS"] and settings["PIPELINE"]:
        return "an endpoint is remote (URLS) or a pipeline (PIPELINE), not both"
    if not versions:
        given = [k for k in ("TRAFFIC", "SHADOW", "STICKY_FIELD") if settings[k]]
        return f"{', '.join(given)} need VERSIONS" if given else None
    unknown = sorted(set(settings["TRAFFIC"]) - set(versions))
    if unknown:
        return f"TRAFFIC names versions that VERSIONS does not: {', '.join(unknown)}"
    shadow = settings["SHADOW"]
    if shadow and shadow.get("VERSION") not in versions:
        return f"SHADOW.VERSION must be one of VERSIONS ({', '.join(versions)})"
    if shadow and shadow.get("FROM") not in (None, *versions):
        return f"SHADOW.FROM must be null or one of VERSIONS ({', '.join(versions)})"
    return None


def initial_weights(settings: dict[str, Any]) -> dict[str, float]:
    """TRAFFIC over every version (a version it leaves out gets 0); by default all
    traffic goes to the first version."""
    versions = list(settings["VERSIONS"])
    given = settings["TRAFFIC"] or {versions[0]: 100}
    return {label: float(given.get(label, 0)) for label in versions}
