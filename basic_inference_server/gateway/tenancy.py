"""What a data-plane request owes its API key, behind one interface for the run flow.

:class:`KeyTenancy` checks keys through the :class:`..tenants.gate.TenantGate` (scope,
limits, quota, metering); :class:`NoTenancy` is the same interface with API keys off:
every call answers at once, nothing is awaited and nothing allocated.

Each step comes in two halves: ``<step>_now`` answers without waiting when it can (no
store call: a key without limits, a slot this process holds, no quota) and returns None
otherwise, then the awaitable ``<step>`` does the rest. A request that needs no store
takes no await for its key.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import Forbidden
from ..tenants.gate import TenantGate
from ..tenants.keys import ApiKey
from ..tenants.limits import Decision, Plan
from ..tenants.quotas import Reservation
from ..tenants.usage import strip_usage
from ..wire.message import Request
from .upstream_conn import StreamEnd, UpstreamResponse

# Answers this large have their USAGE taken out off the event loop.
SCAN_OFF_LOOP = 1024 * 1024
OffLoop = Callable[..., Awaitable[Any]]


@dataclass
class TenantHold:
    """What an admitted request holds until it is answered: its key, its concurrency
    slot, its requests-quota reservation and the limits to report in its headers."""

    key: ApiKey | None = None
    label: str = "-"
    slot: Plan | None = None
    limits: Decision | None = None
    reservation: Reservation | None = None


# A request that holds nothing (no key): shared, never changed.
NO_HOLD = TenantHold()


class Tenancy(Protocol):
    """The tenant checks of a ``/run`` (and of a pipeline's or job's request)."""

    gate: TenantGate | None  # the key store's gate; None with API keys off

    def identify_now(self, req: Request, internal: bool = True) -> bool:
        """Set ``req.key`` when no wait is needed (keys off, a cached key, an internal
        call where ``internal`` allows one); False: :meth:`identify` must run."""

    async def identify(self, req: Request) -> None:
        """Authenticate the request's key (401 when missing or unknown)."""

    def admit_now(self, req: Request, label: str) -> TenantHold | None:
        """Admit the request to ``label`` without waiting, or None: :meth:`admit`."""

    async def admit(self, req: Request, label: str) -> TenantHold:
        """Check the key's scope (403), limits (429) and quota (429)."""

    def charge_now(self, hold: TenantHold, resp: UpstreamResponse) -> float | None:
        """The units a whole answer is charged, when no wait is needed; else None."""

    async def charge(self, hold: TenantHold, resp: UpstreamResponse) -> float:
        """Take the answer's USAGE out and charge it to the key (a 200 only)."""

    def release_now(self, hold: TenantHold) -> bool:
        """Give back what the request held when no wait is needed; False: :meth:`release`."""

    async def release(self, hold: TenantHold) -> None:
        """Give back the slot, and the reservation of a request not answered 200."""

    def stream_held(self, hold: TenantHold, resp: UpstreamResponse,
                    started: float) -> TenantHold:
        """Hand what ``hold`` holds over to the answer's stream, released when it ends;
        what the request itself still holds (nothing once handed over)."""

    def record(self, key: ApiKey | None, label: str, status: int, units: float,
               elapsed: float) -> None:
        """Meter one request of ``key``."""


class NoTenancy:
    """API keys off: no checks, no charges, no metering."""

    gate: TenantGate | None = None

    def identify_now(self, req: Request, internal: bool = True) -> bool:
        """Keys off: nothing to identify."""
        return True

    async def identify(self, req: Request) -> None:
        """Keys off: nothing to authenticate."""
        return None

    def admit_now(self, req: Request, label: str) -> TenantHold | None:
        """Keys off: admitted, holding nothing."""
        return NO_HOLD

    async def admit(self, req: Request, label: str) -> TenantHold:
        """Keys off: admitted, holding nothing."""
        return NO_HOLD

    def charge_now(self, hold: TenantHold, resp: UpstreamResponse) -> float | None:
        """Keys off: nothing is charged."""
        return 0.0

    async def charge(self, hold: TenantHold, resp: UpstreamResponse) -> float:
        """Keys off: nothing is charged."""
        return 0.0

    def release_now(self, hold: TenantHold) -> bool:
        """Keys off: nothing to give back."""
        return True

    async def release(self, hold: TenantHold) -> None:
        """Keys off: nothing to give back."""
        return None

    def stream_held(self, hold: TenantHold, resp: UpstreamResponse,
                    started: float) -> TenantHold:
        """Keys off: the stream holds nothing."""
        return hold

    def record(self, key: ApiKey | None, label: str, status: int, units: float,
               elapsed: float) -> None:
        """Keys off: nothing is metered."""
        return None


class KeyTenancy:
    """API keys on: every request but the job runner's carries a key the gate checks."""

    def __init__(self, gate: TenantGate, off_loop: OffLoop, internal_token: str | None) -> None:
        self.gate: TenantGate | None = gate  # (the interface's view: None with keys off)
        self.keys = gate  # the same gate, typed as never None
        self.off_loop = off_loop
        self._internal = b"Bearer " + internal_token.encode() if internal_token else b""

    def internal(self, req: Request) -> bool:
        """A call of the job runner (the manager's internal credential): it needs no API
        key, the job's limits were taken when it was submitted, and it names the job's
        tenant with X-Customer-ID."""
        if self._internal:
            for header, value in req.headers:
                if header == b"authorization":
                    return hmac.compare_digest(value, self._internal)
        return False

    def identify_now(self, req: Request, internal: bool = True) -> bool:
        """Set ``req.key`` when no wait is needed; False: :meth:`identify` must run."""
        if req.key is not None or (internal and self.internal(req)):
            return True
        req.key = self.keys.cached(req.headers)
        return req.key is not None

    async def identify(self, req: Request) -> None:
        """Authenticate the request's key (401 when missing or unknown)."""
        req.key = await self.keys.authenticate(req.headers)

    def admit_now(self, req: Request, label: str) -> TenantHold | None:
        """Admit the request to ``label`` without waiting, or None: :meth:`admit`."""
        key = req.key
        if key is None:
            return NO_HOLD
        if key.quota is not None or (key.token_budget and req.budget is None):
            return None
        got = self.keys.admit_held(key, label)
        return None if got is None else TenantHold(key, label, *got)

    async def admit(self, req: Request, label: str) -> TenantHold:
        """Check the key's scope (403), limits (429) and quota (429)."""
        key = req.key
        assert key is not None  # (admit_now answers a request without one)
        if key.token_budget and req.budget is None:
            raise Forbidden("this API key has a token budget: it calls the OpenAI routes "
                            "(/v1/chat/completions, /v1/completions), where a request's "
                            "tokens are reserved before it runs", SIGNATURE=label)
        slot, limits = self.keys.admit_held(key, label) or await self.keys.admit(key, label)
        hold = TenantHold(key, label, slot, limits)
        if key.quota is not None:
            try:
                hold.reservation = await self.keys.take_quota(key)
            except BaseException:
                if not self.release_now(hold):
                    await self.release(hold)
                raise
        return hold

    def charge_now(self, hold: TenantHold, resp: UpstreamResponse) -> float | None:
        """The units a whole answer is charged, when no wait is needed; else None."""
        key = hold.key
        if key is None:
            return 0.0
        if b'"USAGE"' in resp.body or (key.quota is not None and resp.status == 200):
            return None
        return 0.0

    async def charge(self, hold: TenantHold, resp: UpstreamResponse) -> float:
        """Take the answer's USAGE out and charge it to the key (a 200 only)."""
        key = hold.key
        assert key is not None  # (charge_now answers a request without one)
        units = 0.0
        if b'"USAGE"' in resp.body:
            resp.body, units = await self.off_loop(strip_usage, resp.body) \
                if len(resp.body) > SCAN_OFF_LOOP else strip_usage(resp.body)
        if key.quota is not None and resp.status == 200:
            await self.keys.charge(key, units, hold.reservation)
        return units

    def release_now(self, hold: TenantHold) -> bool:
        """Give back what the request held when no wait is needed; False: :meth:`release`."""
        if hold.slot is not None and not self.keys.release_held(hold.slot):
            return False
        hold.slot = None
        return hold.reservation is None or hold.reservation.kept

    async def release(self, hold: TenantHold) -> None:
        """Give back the slot, and the reservation of a request not answered 200."""
        try:
            if hold.slot is not None:  # (release_now could not keep it)
                await self.keys.give_back(hold.slot)
        finally:
            if hold.reservation is not None and not hold.reservation.kept:
                await self.keys.release_quota(hold.reservation)  # not answered 200: not charged

    def stream_held(self, hold: TenantHold, resp: UpstreamResponse,
                    started: float) -> TenantHold:
        """Hand what ``hold`` holds over to the answer's stream, released when it ends."""
        if hold.key is None or resp.stream is None:
            return hold
        resp.stream.hold(self._at_stream_end(hold, started))
        return NO_HOLD

    def _at_stream_end(self, hold: TenantHold,
                       started: float) -> Callable[[StreamEnd], Awaitable[None]]:
        """What a key's stream releases at its end: its concurrency slot, then its
        charge (a 200: a requests quota's reservation stays spent; a units quota is
        charged the done event's ``USAGE``) and its metering row."""
        key = hold.key
        assert key is not None

        async def release(end: StreamEnd) -> None:
            try:
                if hold.slot is not None and not self.keys.release_held(hold.slot):
                    await self.keys.give_back(hold.slot)
            finally:
                if key.quota is not None:
                    await self.keys.charge(key, end.units, hold.reservation)
                self.keys.record(key, hold.label, 200, end.units, time.perf_counter() - started)

        return release

    def record(self, key: ApiKey | None, label: str, status: int, units: float,
               elapsed: float) -> None:
        """Meter one request of ``key``."""
        if key is not None:
            self.keys.record(key, label, status, units, elapsed)
