"""API keys: what one is, how it is made, how a request presents it.

A key is ``bis_`` and 32 random bytes (``secrets``), shown once when created. The store
keeps only its SHA-256: the key has 256 bits of entropy, so no dictionary or brute
force reaches it and a slow KDF (bcrypt, scrypt) would add nothing but CPU time on
every request. Each key belongs to one tenant (the customer id passed to endpoints as
``X-Customer-ID``) and carries its scopes and limits.

A key's counters (quota spent, rate buckets, concurrency slots) are its **lineage**'s:
the id of the first key of its rotation chain, which a rotated key inherits, so a
rotation neither resets nor doubles them. A key stored before lineages existed is its
own lineage.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

from ..errors import BadRequest
from ..names import is_name
from .priorities import check_weight
from .usage import Quota, quota_from_request

PREFIX = "bis_"
# Tenants are customer ids: the same rule as endpoint names (they appear in headers,
# metrics labels and CSV files).
TENANT_RULE = "1 to 64 letters, digits, '_' or '-', not starting with a digit or '-'"
# A rate as text; its whole part is not zero (the API table's schema says the same).
RATE_PATTERN = r"^\s*([0-9]*[1-9][0-9]*(?:\.[0-9]+)?)\s*/\s*(second|minute|hour|day)\s*$"
RATE_TEXT = re.compile(RATE_PATTERN)
PER = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
MAX_GRACE = 30 * 86400


def new_secret() -> str:
    """A fresh key: shown once, never stored."""
    return PREFIX + secrets.token_urlsafe(32)


def digest(secret: str | bytes) -> str:
    """What the store keeps of a key (hex SHA-256)."""
    raw = secret.encode("latin-1", "replace") if isinstance(secret, str) else secret
    return hashlib.sha256(raw).hexdigest()


def presented(name: bytes, value: bytes) -> bytes | None:
    """The key a request header presents: ``X-API-Key``, or ``Authorization: Bearer``
    (None: it presents none)."""
    if name == b"x-api-key":
        return value.strip()
    if name == b"authorization":
        scheme, _, given = value.partition(b" ")
        if scheme.lower() == b"bearer":
            return given.strip()
    return None


def looks_like_jwt(given: bytes) -> bool:
    """Whether a bearer credential is a compact JWS, a JWT (keys start ``bis_``)."""
    return given.startswith(b"eyJ") and given.count(b".") == 2


@dataclass
class Bucket:
    """A token bucket: ``rate`` tokens a second refill it up to ``burst``."""

    rate: float
    burst: int


@dataclass
class ApiKey:
    """One key as stored (never its secret)."""

    id: str
    tenant: str
    hash: str
    endpoints: list[str] = field(default_factory=list)  # empty: every endpoint
    read_all_jobs: bool = False
    limit: Bucket | None = None
    endpoint_limits: dict[str, Bucket] = field(default_factory=dict)
    max_concurrent: int | None = None
    quota: Quota | None = None
    name: str = ""
    created: float = field(default_factory=time.time)
    revoked: float | None = None
    expires: float | None = None  # end of a rotation's grace period
    lineage: str = ""  # the first key of its rotation chain: whose counters it uses
    # Tokens a second and burst of its token bucket (TOKEN_RATE, TOKEN_BURST).
    token_limit: Bucket | None = None
    # Its priority class (PRIORITY_CLASSES) and weight in the fair queue; None: its
    # tenant's (TENANTS), else the defaults.
    priority: str | None = None
    weight: float | None = None

    def __post_init__(self) -> None:
        if not self.lineage:
            self.lineage = self.id

    def usable(self, now: float) -> bool:
        """Whether the key works at ``now``: not revoked, not expired."""
        return self.revoked is None and (self.expires is None or now < self.expires)

    def allows(self, endpoint: str) -> bool:
        """Whether the key may call ``endpoint``."""
        return not self.endpoints or endpoint in self.endpoints

    @cached_property
    def token_budget(self) -> bool:
        """Whether the key spends tokens (a token rate limit or a TOKENS quota): its
        generations are reserved at admission (tenants/token_budget.py)."""
        return self.token_limit is not None or (self.quota is not None
                                                and self.quota.unit == "tokens")

    @cached_property
    def limited(self) -> bool:
        """Whether any rate or concurrency limit applies to the key."""
        return bool(self.limit or self.endpoint_limits or self.max_concurrent)

    def to_dict(self) -> dict[str, Any]:
        """The key as stored (JSON-ready)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ApiKey:
        """A key read from the store."""
        data = dict(data)
        data["limit"] = Bucket(**data["limit"]) if data.get("limit") else None
        data["endpoint_limits"] = {k: Bucket(**v) for k, v in
                                   (data.get("endpoint_limits") or {}).items()}
        data["quota"] = Quota(**data["quota"]) if data.get("quota") else None
        data["token_limit"] = Bucket(**data["token_limit"]) if data.get("token_limit") else None
        return cls(**data)

    def public(self) -> dict[str, Any]:
        """The admin API's view: everything but the hash."""
        return {"KEY_ID": self.id, "TENANT": self.tenant, "NAME": self.name,
                "ENDPOINTS": self.endpoints, "READ_ALL_JOBS": self.read_all_jobs,
                "LIMIT": asdict(self.limit) if self.limit else None,
                "ENDPOINT_LIMITS": {k: asdict(v) for k, v in self.endpoint_limits.items()},
                "MAX_CONCURRENT": self.max_concurrent,
                "QUOTA": asdict(self.quota) if self.quota else None,
                "TOKEN_LIMIT": asdict(self.token_limit) if self.token_limit else None,
                "PRIORITY": self.priority, "WEIGHT": self.weight,
                "CREATED": self.created,
                "REVOKED": self.revoked, "EXPIRES": self.expires, "LINEAGE": self.lineage}


def _rate(value: Any, what: str) -> float:
    """Tokens per second from a number or ``"N/second|minute|hour|day"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1e9:
        return float(value)
    if isinstance(value, str):
        match = RATE_TEXT.match(value)
        if match and float(match.group(1)) > 0:
            return float(match.group(1)) / PER[match.group(2)]
    raise BadRequest(f"{what} must be a number of requests a second (> 0) or text like "
                     f"'100/minute' (second, minute, hour, day), got {value!r}")


def _count(value: Any, low: int, high: int) -> int | None:
    """An integer within bounds (JSON's 66.0 is 66), else None."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return None


def bucket_of(spec: Any, what: str) -> Bucket:
    """A bucket from ``{"RATE": ..., "BURST": n}`` (BURST defaults to the rate a
    second, at least 1); BadRequest naming ``what`` when it is not one."""
    if not isinstance(spec, dict) or set(spec) - {"RATE", "BURST"} or "RATE" not in spec:
        raise BadRequest(f"{what} must be {{\"RATE\": ..., \"BURST\": n}}")
    rate = _rate(spec["RATE"], f"{what}.RATE")
    given = spec.get("BURST", min(max(1, round(rate)), 10**9))
    burst = _count(given, 1, 10**9)
    if burst is None:
        raise BadRequest(f"{what}.BURST must be an integer from 1 to 10**9, got {given!r}")
    return Bucket(rate, burst)


FIELDS = {"TENANT", "NAME", "ENDPOINTS", "READ_ALL_JOBS", "RATE", "BURST", "ENDPOINT_LIMITS",
          "MAX_CONCURRENT", "QUOTA", "TOKEN_RATE", "TOKEN_BURST", "PRIORITY", "WEIGHT"}


def _scopes(args: dict[str, Any]) -> tuple[str, list[str], bool, str]:
    """The tenant, endpoints, READ_ALL_JOBS and NAME of a key request, checked."""
    tenant = args.get("TENANT")
    if not isinstance(tenant, str) or not is_name(tenant):
        raise BadRequest(f"TENANT (the customer id) must be {TENANT_RULE}, got {tenant!r}")
    endpoints = args.get("ENDPOINTS", [])
    if not isinstance(endpoints, list) or not all(is_name(e) for e in endpoints):
        raise BadRequest("ENDPOINTS must be a list of endpoint names (empty or absent: all)")
    read_all = args.get("READ_ALL_JOBS", False)
    if not isinstance(read_all, bool):
        raise BadRequest("READ_ALL_JOBS must be true or false")
    name = args.get("NAME", "")
    if not isinstance(name, str) or len(name) > 200:
        raise BadRequest("NAME must be text of at most 200 characters")
    return tenant, sorted(set(endpoints)), read_all, name


def _limits(args: dict[str, Any]) -> tuple[Bucket | None, dict[str, Bucket], int | None]:
    """The rate limit, per-endpoint limits and MAX_CONCURRENT of a key request, checked."""
    limit = bucket_of({k: args[k] for k in ("RATE", "BURST") if k in args}, "RATE/BURST") \
        if "RATE" in args or "BURST" in args else None
    per_endpoint = args.get("ENDPOINT_LIMITS", {})
    if not isinstance(per_endpoint, dict) or not all(is_name(e) for e in per_endpoint):
        raise BadRequest("ENDPOINT_LIMITS must map endpoint names to {RATE, BURST}")
    concurrent = _count(args["MAX_CONCURRENT"], 1, 10**6) if "MAX_CONCURRENT" in args else None
    if "MAX_CONCURRENT" in args and concurrent is None:
        raise BadRequest("MAX_CONCURRENT must be an integer from 1 to 10**6 (or absent)")
    return limit, {e: bucket_of(s, f"ENDPOINT_LIMITS.{e}") for e, s in per_endpoint.items()}, \
        concurrent


def _standing(args: dict[str, Any]) -> tuple[str | None, float | None]:
    """The PRIORITY and WEIGHT of a key request, checked (the class's name against the
    gateway's PRIORITY_CLASSES by the admin API, which knows them)."""
    priority = args.get("PRIORITY")
    if priority is not None and not (isinstance(priority, str) and is_name(priority)):
        raise BadRequest(f"PRIORITY must name a priority class, got {priority!r}")
    weight = args.get("WEIGHT")
    if weight is not None and (problem := check_weight(weight)):
        raise BadRequest(problem)
    return priority, None if weight is None else float(weight)


def key_from_request(args: dict[str, Any]) -> tuple[ApiKey, str]:
    """A new key from the admin API's body, checked field by field; and its secret."""
    secret = new_secret()
    return key_from_fields(args, "key_" + secrets.token_hex(8), digest(secret)), secret


def key_from_fields(args: dict[str, Any], key_id: str, key_hash: str) -> ApiKey:
    """A key from the admin API's fields (:data:`FIELDS`), checked field by field."""
    unknown = sorted(set(args) - FIELDS)
    if unknown:
        raise BadRequest(f"unknown fields {unknown}; a key takes {sorted(FIELDS)}")
    tenant, endpoints, read_all, name = _scopes(args)
    limit, endpoint_limits, concurrent = _limits(args)
    tokens = bucket_of({k.removeprefix("TOKEN_"): args[k] for k in ("TOKEN_RATE", "TOKEN_BURST")
                      if k in args}, "TOKEN_RATE/TOKEN_BURST") \
        if "TOKEN_RATE" in args or "TOKEN_BURST" in args else None
    priority, weight = _standing(args)
    return ApiKey(id=key_id, tenant=tenant, hash=key_hash,
                  endpoints=endpoints, read_all_jobs=read_all, limit=limit,
                  endpoint_limits=endpoint_limits, max_concurrent=concurrent, name=name,
                  token_limit=tokens, priority=priority, weight=weight,
                  quota=quota_from_request(args["QUOTA"]) if "QUOTA" in args else None)


def grace_of(args: dict[str, Any]) -> float:
    """The ``GRACE`` argument of a rotation: seconds the old key keeps working."""
    grace = args.get("GRACE", 3600)
    if not isinstance(grace, (int, float)) or isinstance(grace, bool) \
            or not 0 <= grace <= MAX_GRACE:
        raise BadRequest(f"GRACE must be seconds from 0 to {MAX_GRACE}, got {grace!r}")
    return float(grace)
