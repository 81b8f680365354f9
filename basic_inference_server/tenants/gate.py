"""The front's check of every data-plane request: who is calling, may it, is it within
its limits. Runs on the event loop; keys are cached in memory.

The cache is dropped whenever the store's change stamp moves, and the stamp is read
at most every ``CHECK_EVERY`` seconds: a revoked key is refused by every front
process within that time of the revoke, with no store call per request for the key
itself. The cache counts as checked from when a stamp read was sent, once its answer
is in: requests that come while it is on its way wait for it (one read for all of
them), never for a cache that was last checked before it.

Rate limits are taken from what this process took ahead, and from the store only
every few requests (:mod:`.allot`): most limited requests take no lock and make no
round trip.

When the store (Redis) does not answer, ``TENANTS_FAIL_OPEN`` decides: false (the
default) answers 503; true serves keys already cached (a key never seen still gets
503: it cannot be checked), takes limits from memory shared by this gateway's front
processes, and keeps quota charges in memory until the store answers again.
"""

from __future__ import annotations

import asyncio
import os
import time
from hashlib import blake2b
from typing import TYPE_CHECKING, Any

from ..errors import BadRequest, Forbidden, Unauthorized, Unavailable
from ..ledger.journal import Journal
from . import TenantsSpec
from .allot import Ahead, Ticket
from .keys import ApiKey, digest, looks_like_jwt, presented
from .limits import Decision, Plan, RateLimited, StoreDown
from .metering import FLUSH_EVERY, Meter
from .quotas import QuotaBook, Reservation
from .shared import SharedLimits
from .store import KeyStore, OffLoop, open_store
from .token_budget import TokenBudget
from .usage import period

if TYPE_CHECKING:
    from .jwt_issuers import JwtIssuers

CHECK_EVERY = 0.25
# Keys held in memory per front process; past it the cache starts over (a flood of
# unknown keys must not grow it without bound).
MAX_CACHED = 10000


class KeyRequired(Unauthorized):
    """A data-plane request without a valid API key."""

    def headers(self) -> list[tuple[str, str]]:
        """With ``WWW-Authenticate``: the scheme to use."""
        return [("WWW-Authenticate", 'Bearer realm="api"')]


class TenantGate:
    """Authenticates keys and admits requests under their limits."""

    def __init__(self, spec: TenantsSpec, off_loop: OffLoop, processes: int) -> None:
        self.spec = spec
        self.store: KeyStore = open_store(spec.redis, spec.db, off_loop, processes)
        assert self.store.limits is not None
        self.limits: Ahead = self.store.limits
        # Fail open: limits counted here, quotas kept in memory, while the store is down.
        self.shared = SharedLimits(processes) if spec.fail_open and spec.redis else None
        self.local = Ahead(self.shared) if self.shared is not None else None
        self.quotas = QuotaBook(self.store, self.local is not None)
        self.tokens = TokenBudget(self.store)
        self.meter = Meter()
        # The ledger's journal (LEDGER_POSTGRES): written before the answer goes out.
        self.journal = Journal(spec.journal) if spec.journal else None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._cache: dict[bytes, ApiKey | None] = {}
        self._mark_key = os.urandom(16)
        # Per key id and endpoint: its plan's buckets and slots (see _plan).
        self._plans: dict[tuple[str, str], tuple[list[tuple[str, float, int]],
                                                 tuple[str, int] | None]] = {}
        self._stamp: Any = object()
        self._checked = -1.0  # when the stamp read that last confirmed the cache was sent
        self._reading: asyncio.Task[None] | None = None  # the stamp read on its way
        self._generation = 0  # moves when the cache is dropped
        self.jwt: JwtIssuers | None = None  # JWT_ISSUERS: bearer JWTs stand for keys
        if spec.jwt_issuers:
            from .jwt_issuers import JwtIssuers  # the `jwt` extra, only when configured

            self.jwt = JwtIssuers(spec.jwt_issuers)

    async def _guard(self, coro: Any, fallback: Any = None) -> Any:
        """The store's answer; when it is down, ``fallback`` (fail open) or a 503."""
        try:
            return await coro
        except StoreDown as exc:
            if self.local is not None and fallback is not None:
                return fallback()
            raise Unavailable(f"the key store is not reachable: {exc}", retry_after=1) from None

    def claim_row(self, row: int) -> None:
        """In a new front process (see :meth:`.shared.SharedLimits.claim_row`)."""
        self.store.claim_row(row)
        if self.shared is not None:
            self.shared.claim_row(row)

    @staticmethod
    def _given(headers: list[tuple[bytes, bytes]]) -> bytes:
        """The key a request presents (400 when it claims a customer, 401 without one)."""
        given = None
        for name, value in headers:
            if name == b"x-customer-id":
                raise BadRequest("X-Customer-ID is set by the gateway from the API key; "
                                 "do not send it")
            if given is None and (name == b"x-api-key" or name == b"authorization"):
                given = presented(name, value)
        if not given:
            raise KeyRequired("this gateway needs an API key: 'Authorization: Bearer <key>' "
                              "or 'X-API-Key: <key>'")
        return given

    def _mark(self, given: bytes) -> bytes:
        """The cache's own digest of a key: keyed BLAKE2b, several times cheaper than the
        store's SHA-256 through OpenSSL on a busy front, and no secret kept in memory."""
        return blake2b(given, key=self._mark_key, digest_size=16).digest()

    def cached(self, headers: list[tuple[bytes, bytes]]) -> ApiKey | None:
        """The request's key when the cache is fresh and knows it as usable (no await);
        else None, and :meth:`authenticate` decides."""
        if time.monotonic() - self._checked >= CHECK_EVERY:
            return None
        key = self._cache.get(self._mark(self._given(headers)))
        return key if key is not None and key.usable(time.time()) else None

    async def authenticate(self, headers: list[tuple[bytes, bytes]]) -> ApiKey:
        """The request's key (401 without a valid one; 400 when it claims a customer)."""
        given = self._given(headers)
        if time.monotonic() - self._checked >= CHECK_EVERY:
            if self._reading is None:
                self._reading = asyncio.get_running_loop().create_task(self._read_stamp())
            # Shielded: a request that goes away does not stop the read the others wait for.
            await asyncio.shield(self._reading)
        mark = self._mark(given)
        try:
            key = self._cache[mark]
        except KeyError:
            generation = self._generation
            if self.jwt is not None and looks_like_jwt(given):
                key = await self.jwt.key_for(given)
            else:
                key = await self._guard(self.store.find(digest(given)))
            if generation == self._generation:  # else the record may predate the new stamp
                if len(self._cache) >= MAX_CACHED:
                    self._cache.clear()
                self._cache[mark] = key
        if key is None or not key.usable(time.time()):
            raise KeyRequired("unknown, revoked or expired API key")
        return key

    async def _read_stamp(self) -> None:
        """Read the store's stamp; drop the cache when it moved. The cache is fresh from
        when the read was sent (the answer is at least that recent), not before."""
        try:
            sent = time.monotonic()
            stamp = await self._guard(self.store.stamp(), lambda: self._stamp)
            if stamp != self._stamp:
                self._cache.clear()
                self._plans.clear()
                self._generation += 1
                self._stamp = stamp
            self._checked = sent
        finally:
            self._reading = None

    def admit_held(self, key: ApiKey, endpoint: str
                   ) -> tuple[Plan | None, Decision | None] | None:
        """:meth:`admit`'s answer when no store is needed: the key has no limits, or
        this process holds what the request takes; else None, with nothing taken."""
        if not key.allows(endpoint):
            return None
        if not key.limited:
            return None, None
        plan = self._plan(key, endpoint)
        decision = self.limits.held.quick(plan)
        return None if decision is None else ((plan if plan.slots else None), decision)

    async def admit(self, key: ApiKey, endpoint: str) -> tuple[Plan | None, Decision | None]:
        """Check the key's scope (403) and take its limits (429); what to release after."""
        if not key.allows(endpoint):
            raise Forbidden(f"this API key may not call {endpoint!r}", SIGNATURE=endpoint)
        if not key.limited:
            return None, None
        plan = self._plan(key, endpoint)
        got = self.limits.claim(plan)
        decision = got if isinstance(got, Decision) else await self._fetch(plan, got)
        if not decision.allowed:
            which = ("MAX_CONCURRENT" if decision.refused_by > len(plan.buckets)
                     else "the endpoint's rate limit" if decision.refused_by == 2
                     else "the key's rate limit" if key.limit else "the endpoint's rate limit")
            raise RateLimited(f"this API key is over {which}; retry after "
                              f"{max(1, round(decision.retry_after))} s", decision,
                              SIGNATURE=endpoint)
        return (plan if plan.slots else None), decision

    def _plan(self, key: ApiKey, endpoint: str) -> Plan:
        """What a request of ``key`` to ``endpoint`` takes (its parts kept per key)."""
        parts = self._plans.get((key.id, endpoint))
        if parts is None:
            # Named by the key's lineage: a rotated key goes on with its buckets and slots.
            line = key.lineage
            buckets = [(line, key.limit.rate, key.limit.burst)] if key.limit else []
            own = key.endpoint_limits.get(endpoint)
            if own is not None:
                buckets.append((line + ":" + endpoint, own.rate, own.burst))
            if len(self._plans) >= MAX_CACHED:
                self._plans.clear()
            parts = self._plans[(key.id, endpoint)] = (
                buckets, (line + ":slots", key.max_concurrent) if key.max_concurrent else None)
        return Plan(*parts)

    def address_now(self, plan: Plan) -> Decision | None:
        """A client address's bucket (ANON_LIMIT, keys off) when this process holds a
        token of it; else None, with nothing taken: :meth:`address`."""
        return self.limits.held.quick(plan)

    async def address(self, plan: Plan) -> Decision:
        """A client address's bucket, from the store when this process holds none."""
        got = self.limits.claim(plan)
        return got if isinstance(got, Decision) else await self._fetch(plan, got)

    async def _fetch(self, plan: Plan, ticket: Ticket) -> Decision:
        """The rest of a plan from the store; from this gateway's memory while the store
        is down and ``TENANTS_FAIL_OPEN`` is on."""
        try:
            return await self.limits.fetch(plan, ticket)
        except StoreDown as exc:
            if self.local is None:
                raise Unavailable(f"the key store is not reachable: {exc}",
                                  retry_after=1) from None
            plan.local = True
            return await self.local.take(plan)

    def release_held(self, plan: Plan) -> bool:
        """Keep a concurrency slot for this process's next request when it may (True,
        no await); else :meth:`give_back` returns it to the store."""
        return not plan.local and self.limits.held.release(plan)

    async def give_back(self, plan: Plan) -> None:
        """Return a concurrency slot that :meth:`release_held` did not keep."""
        try:
            if plan.local and self.local is not None:
                await self.local.release(plan)
            else:
                await self.limits.drop(plan)
        except StoreDown:
            pass  # the slot's lease lapses on its own

    async def release(self, plan: Plan) -> None:
        """Give back a concurrency slot: kept here when it may, else to the store."""
        if not self.release_held(plan):
            await self.give_back(plan)

    async def take_quota(self, key: ApiKey) -> Reservation | None:
        """At admission (429 ``quota_exceeded`` when the key has spent its quota): a
        requests quota reserves one request, to :meth:`charge` (a 200) or
        :meth:`release_quota`; a units quota is checked (its units are charged after)."""
        return await self.quotas.take(key)

    async def charge(self, key: ApiKey, units: float, held: Reservation | None) -> None:
        """A request answered 200: its reservation stays spent; a units quota is
        charged the units it reported."""
        if held is not None:
            held.kept = True
        else:
            await self.quotas.charge(key, units)

    async def release_quota(self, held: Reservation) -> None:
        """Give back a reservation whose request was not answered 200."""
        await self.quotas.release(held)

    async def usage(self, key: ApiKey) -> dict[str, Any]:
        """``GET /usage``: the key's own counters and limits."""
        out: dict[str, Any] = {k: v for k, v in key.public().items()
                               if k not in ("CREATED", "REVOKED", "NAME")}
        if key.quota is not None:
            label, reset = period(key.quota.per, time.time())
            out["USAGE"] = {"PERIOD": label, "UNIT": key.quota.unit, "QUOTA": key.quota.amount,
                            "SPENT": await self._guard(self.store.spent(key.lineage, label)),
                            "RESET_AT": reset}
        return out

    def record(self, key: ApiKey, endpoint: str, status: int, units: float,
               latency: float) -> None:
        """Meter one request (and journal it for the ledger); its batch is written
        ``FLUSH_EVERY`` seconds after the first count of it (in the background)."""
        if self.journal is not None:
            self.journal.record(key.tenant, endpoint, status, units, latency)
        self.meter.record(key.tenant, endpoint, status, units, latency)
        if self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(FLUSH_EVERY, self._due)

    def _due(self) -> None:
        self._flush_timer = None
        asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        rows = self.meter.take()
        try:
            await self.store.meter(rows)
        except StoreDown:
            self.meter.restore(rows)  # kept for the next flush

    def close(self) -> None:
        """At the process's end: close the journal's segment."""
        if self.journal is not None:
            self.journal.close()

    @staticmethod
    def may_read(key: ApiKey, record: dict[str, Any]) -> bool:
        """Whether a key may read a job: its tenant's, or any with READ_ALL_JOBS."""
        return key.read_all_jobs or record.get("TENANT") == key.tenant
