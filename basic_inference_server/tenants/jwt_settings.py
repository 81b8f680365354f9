"""The ``JWT_ISSUERS`` setting: each issuer's parts, their defaults and their checks
(read at configuration time, without the JOSE library: :mod:`.jwt_issuers` verifies)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..errors import BadRequest
from .keys import FIELDS, key_from_fields

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
              "ES256", "ES384", "ES512", "EdDSA")
KEY_TYPES = ("RSA", "EC", "OKP")
PLAN_FIELDS = sorted(FIELDS - {"TENANT", "NAME", "ENDPOINTS", "READ_ALL_JOBS"})
# An issuer's parts: their kinds and defaults (None: required; JWKS_URL or JWKS_FILE).
PARTS: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "ISSUER": (str, None), "AUDIENCE": (str, None),
    "JWKS_URL": ((str, type(None)), None), "JWKS_FILE": ((str, type(None)), None),
    "ALGORITHMS": (list, ["RS256", "ES256"]), "LEEWAY": (int, 30),
    "JWKS_REFRESH": (int, 300), "JWKS_MIN_REFRESH": (int, 10),
    "TENANT_CLAIM": (str, "tenant"), "SCOPE_CLAIM": (str, "scope"),
    "PLAN_CLAIM": (str, "plan"), "PLANS": (dict, {"default": {}}),
}


def _check_kinds(spec: dict[str, Any], where: str) -> str | None:
    """Every part known, present when required, of its kind."""
    unknown = sorted(set(spec) - set(PARTS))
    if unknown:
        return f"{where}: unknown parts {unknown}; an issuer takes {sorted(PARTS)}"
    for name, (kind, default) in PARTS.items():
        value = spec.get(name, default)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if value is None and type(None) not in kinds:
            return f"{where}: {name} is required"
        if isinstance(value, bool) or not isinstance(value, kinds):
            return f"{where}: {name} must be {' or '.join(k.__name__ for k in kinds)}"
    return None


def _check_keys_source(spec: dict[str, Any], where: str) -> str | None:
    """One of JWKS_URL and JWKS_FILE; the URL over https (http on the loopback)."""
    if (spec.get("JWKS_URL") is None) == (spec.get("JWKS_FILE") is None):
        return f"{where}: give JWKS_URL or JWKS_FILE (one of them)"
    url = spec.get("JWKS_URL")
    if url is not None:
        parts = urlsplit(url)
        loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
        if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
            return f"{where}: JWKS_URL must be https:// (http:// only on the loopback)"
    return None


def _check_values(spec: dict[str, Any], where: str) -> str | None:
    """Algorithms from the asymmetric list, seconds in range, plans that make keys."""
    algorithms = spec.get("ALGORITHMS", PARTS["ALGORITHMS"][1])
    if not algorithms or any(a not in ALGORITHMS for a in algorithms):
        return f"{where}: ALGORITHMS must be a non-empty list of {list(ALGORITHMS)}"
    for name in ("LEEWAY", "JWKS_REFRESH", "JWKS_MIN_REFRESH"):
        if not 0 <= spec.get(name, PARTS[name][1]) <= 86400:
            return f"{where}: {name} must be seconds from 0 to 86400"
    for name, plan in spec.get("PLANS", {}).items():
        if not isinstance(plan, dict) or set(plan) - set(PLAN_FIELDS):
            return f"{where}: PLANS.{name} must be an object of {PLAN_FIELDS}"
        try:
            key_from_fields({**plan, "TENANT": "check"}, "check", "")
        except BadRequest as exc:
            return f"{where}: PLANS.{name}: {exc}"
    return None


def _check_issuer(spec: Any, where: str) -> str | None:
    """What is wrong with one issuer's section (None: nothing)."""
    if not isinstance(spec, dict):
        return f"{where} must be an object"
    return (_check_kinds(spec, where) or _check_keys_source(spec, where)
            or _check_values(spec, where))


def check_issuers(value: list[Any]) -> str | None:
    """The JWT_ISSUERS setting's check."""
    seen = set()
    for i, spec in enumerate(value):
        problem = _check_issuer(spec, f"issuer {i}")
        if problem:
            return problem
        if spec["ISSUER"] in seen:
            return f"issuer {i}: ISSUER {spec['ISSUER']!r} is given twice"
        seen.add(spec["ISSUER"])
    return None
