"""A rate limit per client address when API keys are off (``ANON_LIMIT``).

Each address has a token bucket, taken in the same store as keys' limits (the front
processes' shared memory, or ``TENANTS_REDIS``), so the limit is exact across front
processes and gateways. The address is the connection's peer, unless that peer is one
of ``TRUSTED_PROXIES``: then ``X-Forwarded-For`` is read from the right, past every
trusted proxy, and the first address that is not one is the client's (a client can
write anything at the left end of that header; only what trusted proxies appended
counts). An entry that is not an address stops the walk at the proxy that passed it.
Anything else of the request is as with keys off: no tenant, nothing charged.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ..tenants.gate import TenantGate
from ..tenants.keys import bucket_of
from ..tenants.limits import Decision, Plan, RateLimited
from ..wire.message import Request
from .tenancy import NO_HOLD, NoTenancy, TenantHold

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Plans held per front process; past it the table starts over (an address flood must
# not grow it without bound).
MAX_PLANS = 10000


def client_address(req: Request, proxies: list[Network]) -> str:
    """The client's address: the peer, or what trusted proxies say it is."""
    peer = req.peer[0]
    if not proxies or not _trusted(peer, proxies):
        return peer
    hops = [part.strip() for name, value in req.headers if name == b"x-forwarded-for"
            for part in value.decode("latin-1").split(",")]
    current = peer
    for hop in reversed(hops):
        if not _trusted(hop, proxies):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return current  # garbage passed by the proxy ``current``: its bucket
        current = hop
    return current


def _trusted(address: str, proxies: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


class AddressTenancy(NoTenancy):
    """Keys off, ``ANON_LIMIT`` on: every request takes a token of its address's bucket."""

    def __init__(self, gate: TenantGate, limit: dict[str, Any], proxies: list[str]) -> None:
        self.limits = gate
        self.bucket = bucket_of(limit, "ANON_LIMIT")
        self.proxies = [ipaddress.ip_network(p, strict=False) for p in proxies]
        self._plans: dict[str, Plan] = {}

    def _plan(self, req: Request) -> Plan:
        address = client_address(req, self.proxies)
        plan = self._plans.get(address)
        if plan is None:
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            plan = self._plans[address] = Plan(
                [("addr:" + address, self.bucket.rate, self.bucket.burst)])
        return plan

    @staticmethod
    def _held(decision: Decision) -> TenantHold:
        if not decision.allowed:
            raise RateLimited(f"this address is over the gateway's rate limit for callers "
                              f"without a key; retry after {max(1, round(decision.retry_after))} s",
                              decision)
        return NO_HOLD

    def admit_now(self, req: Request, label: str) -> TenantHold | None:
        """A token of the address's bucket when this process holds one; else None."""
        decision = self.limits.address_now(self._plan(req))
        return None if decision is None else self._held(decision)

    async def admit(self, req: Request, label: str) -> TenantHold:
        """A token of the address's bucket (429 with Retry-After when it is empty)."""
        return self._held(await self.limits.address(self._plan(req)))
