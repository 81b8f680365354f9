"""Bearer JWTs from configured issuers, an alternative to API keys (``JWT_ISSUERS``).

A token is verified with joserfc against its issuer's public keys: a JWKS fetched from
``JWKS_URL`` (kept ``JWKS_REFRESH`` seconds, fetched again at once for a key id it does
not hold, at most once every ``JWKS_MIN_REFRESH`` seconds, so a rotation at the issuer
is picked up without a restart and a flood of made-up key ids cannot hammer the issuer)
or read from ``JWKS_FILE`` (read again when it changes). Only asymmetric algorithms
from the issuer's ``ALGORITHMS`` are accepted (never ``none``, never HMAC: a public key
is no secret), and only the keys of the JWKS that are not symmetric. ``exp`` is
required; ``nbf``, ``iss`` and ``aud`` are checked, with ``LEEWAY`` seconds of clock
skew.

The claims become an :class:`.keys.ApiKey`, so tenants, limits, quotas and metering
apply as to a key: ``TENANT_CLAIM`` names the tenant; ``SCOPE_CLAIM`` (a space-separated
string or a list) grants ``run:<endpoint>`` or ``run:*``, and ``jobs:read_all``; the
``PLAN_CLAIM``'s value picks one of ``PLANS``, each a key's limit fields (``RATE``,
``QUOTA``, ``TOKEN_RATE`` ...). Counters are the tenant's under that issuer: a new token
of the same tenant goes on with them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact

from ..errors import BadRequest, Forbidden, ServingError, Unauthorized, Unavailable
from ..names import is_name
from .jwt_settings import KEY_TYPES, PARTS
from .keys import ApiKey, key_from_fields

MAX_TOKEN = 16 * 1024  # bytes of a token; a larger one is refused unread
MAX_JWKS = 1024 * 1024  # bytes of a JWKS document


class TokenRefused(Unauthorized):
    """A bearer JWT that is not valid here."""

    def headers(self) -> list[tuple[str, str]]:
        """With ``WWW-Authenticate``: the scheme, and why (RFC 6750)."""
        return [("WWW-Authenticate", 'Bearer realm="api", error="invalid_token"')]


@dataclass
class Issuer:
    """One issuer: its settings and its public keys as last read."""

    spec: dict[str, Any]
    keys: KeySet | None = None
    read_at: float = float("-inf")  # monotonic
    file_stamp: tuple[int, int] | None = None
    retry_at: float = 0.0  # monotonic: no read before (after a failed one)
    _reading: asyncio.Task[KeySet] | None = field(default=None, repr=False)

    def setting(self, name: str) -> Any:
        """A part of its section, or the part's default."""
        return self.spec.get(name, PARTS[name][1])

    async def key_set(self, again: bool = False) -> KeySet:
        """Its keys: read when never read, stale, or ``again`` (a key id it lacks) and
        not read within JWKS_MIN_REFRESH; one read at a time for every caller. After a
        failed read, none is tried for JWKS_MIN_REFRESH (at least a second): the keys
        held go on verifying, or, without any, requests get a 503 at once rather than
        each waiting on an issuer that does not answer."""
        now = time.monotonic()
        age = now - self.read_at
        stale = age >= self.setting("JWKS_REFRESH") or self._file_moved()
        wanted = stale or (again and age >= self.setting("JWKS_MIN_REFRESH"))
        if self.keys is not None and not wanted:
            return self.keys
        if now >= self.retry_at and self._reading is None:
            self._reading = asyncio.get_running_loop().create_task(self._read())
        try:
            if self._reading is None:
                raise OSError("the last read failed")
            return await asyncio.shield(self._reading)
        except (OSError, httpx.HTTPError, ValueError, JoseError) as exc:
            if self.keys is not None:  # the keys held still verify until it answers
                return self.keys
            raise Unavailable(f"the keys of issuer {self.spec['ISSUER']!r} could not be "
                              f"read: {type(exc).__name__}", retry_after=5) from None

    def _file_moved(self) -> bool:
        path = self.setting("JWKS_FILE")
        return path is not None and _stamp(path) != self.file_stamp

    async def _read(self) -> KeySet:
        try:
            self.retry_at = time.monotonic() + max(1, self.setting("JWKS_MIN_REFRESH"))
            if self.setting("JWKS_FILE") is not None:
                path = self.setting("JWKS_FILE")
                stamp = _stamp(path)
                with open(path, "rb") as f:
                    raw = f.read(MAX_JWKS + 1)
            else:
                stamp, raw = None, await _fetch(self.setting("JWKS_URL"))
            if len(raw) > MAX_JWKS:
                raise ValueError(f"a JWKS over {MAX_JWKS} bytes")
            self.keys = public_keys(orjson.loads(raw))
            self.file_stamp = stamp
            self.read_at = time.monotonic()
            self.retry_at = 0.0
            return self.keys
        finally:
            self._reading = None


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


async def _fetch(url: str) -> bytes:
    """A JWKS document from its URL: no redirects, 5 s, at most MAX_JWKS bytes."""
    async with httpx.AsyncClient(timeout=5.0, follow_redirects=False) as client, \
            client.stream("GET", url, headers={"Accept": "application/json"}) as resp:
        resp.raise_for_status()
        body = bytearray()
        async for chunk in resp.aiter_bytes():
            body += chunk
            if len(body) > MAX_JWKS:
                raise ValueError(f"a JWKS over {MAX_JWKS} bytes")
        return bytes(body)


def public_keys(document: Any) -> KeySet:
    """The asymmetric keys of a JWKS document (symmetric ones are dropped: a key any
    holder of the document could sign with is no key)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("a JWKS is an object with a list of keys")
    keys = [k for k in document["keys"] if isinstance(k, dict) and k.get("kty") in KEY_TYPES]
    return KeySet.import_key_set({"keys": keys})


class JwtIssuers:
    """Every configured issuer; turns a bearer JWT into the key it stands for."""

    def __init__(self, specs: list[dict[str, Any]]) -> None:
        self.issuers = {spec["ISSUER"]: Issuer(spec) for spec in specs}

    async def key_for(self, token: bytes) -> ApiKey:
        """The key a valid token stands for; 401 when it is not valid, 403 when it
        grants nothing, 503 when its issuer's keys cannot be read."""
        if len(token) > MAX_TOKEN:
            raise TokenRefused(f"a bearer token over {MAX_TOKEN} bytes")
        try:
            claimed = orjson.loads(extract_compact(token).payload)
        except (JoseError, ValueError, orjson.JSONDecodeError):
            raise TokenRefused("the bearer token is not a JWT") from None
        issuer = self.issuers.get(claimed.get("iss")) if isinstance(claimed, dict) else None
        if issuer is None:
            raise TokenRefused("the token's issuer (iss) is not one this gateway trusts")
        claims = await self._verified(issuer, token)
        return self._key(issuer, claims)

    async def _verified(self, issuer: Issuer, token: bytes) -> dict[str, Any]:
        algorithms = issuer.setting("ALGORITHMS")
        keys = await issuer.key_set()
        try:
            try:
                decoded = jwt.decode(token, keys, algorithms=algorithms)
            except InvalidKeyIdError:  # perhaps rotated in since the last read
                decoded = jwt.decode(token, await issuer.key_set(again=True),
                                     algorithms=algorithms)
            registry = jwt.JWTClaimsRegistry(
                leeway=issuer.setting("LEEWAY"), exp={"essential": True},
                iss={"essential": True, "value": issuer.spec["ISSUER"]},
                aud={"essential": True, "value": issuer.spec["AUDIENCE"]})
            registry.validate(decoded.claims)
        except ExpiredTokenError:
            raise TokenRefused("the token has expired") from None
        except ServingError:
            raise
        except (JoseError, ValueError) as exc:
            raise TokenRefused(f"the token is not valid here: {exc.__class__.__name__}") from None
        return dict(decoded.claims)

    @staticmethod
    def _key(issuer: Issuer, claims: dict[str, Any]) -> ApiKey:
        tenant = claims.get(issuer.setting("TENANT_CLAIM"))
        if not isinstance(tenant, str) or not is_name(tenant):
            raise TokenRefused(f"the token's {issuer.setting('TENANT_CLAIM')!r} claim must "
                               f"name a tenant")
        scope = claims.get(issuer.setting("SCOPE_CLAIM"), "")
        scopes = scope.split() if isinstance(scope, str) else scope
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise TokenRefused(f"the token's {issuer.setting('SCOPE_CLAIM')!r} claim must be "
                               f"a space-separated string or a list of strings")
        runs = [s.removeprefix("run:") for s in scopes if s.startswith("run:")]
        if not runs:
            raise Forbidden("the token grants no endpoint (scope run:<endpoint> or run:*)")
        plan_name = claims.get(issuer.setting("PLAN_CLAIM"), "default")
        plans = issuer.setting("PLANS")
        if not isinstance(plan_name, str) or plan_name not in plans:
            raise Forbidden(f"the token's plan is not one of this gateway's: {sorted(plans)}")
        # The counters' name: the tenant under this issuer, whatever token it presents.
        lineage = "jwt_" + hashlib.sha256(
            f"{issuer.spec['ISSUER']}\0{tenant}".encode()).hexdigest()[:24]
        fields = {**plans[plan_name], "TENANT": tenant,
                  "ENDPOINTS": [] if "*" in runs else runs,
                  "READ_ALL_JOBS": "jobs:read_all" in scopes,
                  "NAME": str(claims.get("sub", ""))[:200]}
        try:
            key = key_from_fields(fields, lineage, "")
        except BadRequest as exc:
            raise TokenRefused(f"the token's claims do not make a key: {exc}") from None
        key.expires = float(claims["exp"]) + issuer.setting("LEEWAY")
        return key
