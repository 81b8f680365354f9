"""Tokens and concurrency slots a front process takes ahead of its requests.

Taking a key's limits costs a lock in shared memory (SQLite store) or a Redis round
trip (``TENANTS_REDIS``): on every request, more of the front's CPU than the 10 % the
limits may cost. So while a bucket is far from empty a front process takes a few of
its tokens at once, and serves the next requests of the key from them, with no lock
and no round trip; slots likewise. What it holds is the bucket's and the key's, taken
by the same atomic step as a single token: no key ever gets more than its limits,
across any number of front processes and gateways.

- A grant is one token, plus up to ``CHUNK - 1`` ahead while the bucket holds at
  least ``RESERVE`` times the grant. Near empty, grants are of one: the last tokens of
  a bucket are never taken ahead.
- A request may be refused while another front process holds tokens it took ahead
  (at most ``CHUNK - 1`` per bucket and process); a process gives back what it has not
  used after ``IDLE`` seconds without a request of that key.
- A slot taken ahead returns to the process's pool when its request ends, while the
  key had ``RESERVE`` times the grant free; else, and once idle, it goes back to the
  source. A pooled slot with a lease (Redis) is used only in the first half of it.

Where the tokens come from is a :class:`Source`: :class:`.shared.SharedLimits` or
:class:`.redis_limits.RedisSource`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .limits import Decision, Plan, StoreDown, decide, slot_token

CHUNK = 32
RESERVE = 8
IDLE = 0.2


@dataclass(slots=True)
class Held:
    """Tokens of one bucket this process took ahead."""

    rate: float
    burst: int
    tokens: int = 0
    level: float = 0.0  # the bucket at the source after the last grant (for RateLimit-*)
    used: float = 0.0


@dataclass(slots=True)
class Pool:
    """Slots of one key this process holds: each slot's token and when it was granted."""

    leased: dict[str, float] = field(default_factory=dict)
    free: list[str] = field(default_factory=list)
    ahead: bool = False  # the last grant was of more than one: slots were plentiful
    used: float = 0.0


@dataclass(slots=True)
class Ticket:
    """What a request took here, and what it asks the source for (0: nothing)."""

    wants: list[int]
    slot_want: int


class Source(Protocol):
    """Where tokens and slots come from, atomically.

    ``grant`` answers as :data:`.redis_limits.LUA` does: refused (0: allowed; the
    1-based index of the bucket, or buckets + 1 for the slots), slots granted, slots
    free, then per bucket its tokens before the call and the tokens granted. Errors are
    :class:`.limits.StoreDown`.
    """

    lease: float  # how long a slot stays the process's (inf: until the process ends)

    async def grant(self, plan: Plan, ticket: Ticket, name: str) -> Sequence[Any]:
        """Take the plan's tokens and slot for ``name`` if all are there (see above)."""

    async def give_back(self, bucket: str, held: Held) -> None:
        """Return the tokens ``held`` to ``bucket`` (a request refused further on)."""

    async def drop_slots(self, slots: str, names: list[str]) -> None:
        """Give back the slots ``names`` hold in ``slots``."""


class Holdings:
    """One front process's tokens and slots taken ahead (used on its event loop only)."""

    def __init__(self, lease: float) -> None:
        self.lease = lease
        self.buckets: dict[str, Held] = {}
        self.pools: dict[str, Pool] = {}

    def quick(self, plan: Plan) -> Decision | None:
        """The decision when what is held covers the whole request (taken here); None,
        with nothing taken, when it does not."""
        helds = []
        for bid, _rate, _burst in plan.buckets:
            held = self.buckets.get(bid)
            if held is None or held.tokens < 1:
                return None
            helds.append(held)
        now = time.monotonic()
        if plan.slots:
            pool = self.pools.get(plan.slots[0])
            if pool is None or not pool.free \
                    or now - pool.leased[pool.free[-1]] >= self.lease / 2:
                return None
            plan.token, pool.used = pool.free.pop(), now
        tightest = None
        for held in helds:
            held.tokens -= 1
            held.used = now
            if tightest is None or held.level + held.tokens < tightest.level + tightest.tokens:
                tightest = held
        if tightest is None:
            return Decision(True, retry_after=1.0)
        left = tightest.level + tightest.tokens
        return Decision(True, 0, tightest.burst, max(0, math.floor(left)),
                        (tightest.burst - left) / tightest.rate, 1.0)

    def claim(self, plan: Plan) -> Ticket:
        """Take what the request needs from what is held; say what is missing."""
        now = time.monotonic()
        wants = []
        for bid, _rate, _burst in plan.buckets:
            held = self.buckets.get(bid)
            if held is not None and held.tokens >= 1:
                held.tokens -= 1
                held.used = now
                wants.append(0)
            else:
                wants.append(CHUNK)
        slot_want = 0
        if plan.slots:
            pool = self.pools.get(plan.slots[0])
            while pool is not None and pool.free:
                token = pool.free.pop()
                if now - pool.leased[token] < self.lease / 2:
                    plan.token, pool.used = token, now
                    break
                del pool.leased[token]  # its lease lapses in Redis on its own
            else:
                slot_want = CHUNK
        return Ticket(wants, slot_want)

    def unclaim(self, plan: Plan, ticket: Ticket) -> None:
        """The request was refused, or the source did not answer: give back what it
        took here."""
        for (bid, _rate, _burst), want in zip(plan.buckets, ticket.wants, strict=True):
            if not want:
                self.buckets[bid].tokens += 1
        if plan.slots and not ticket.slot_want:
            self.pools[plan.slots[0]].free.append(plan.token)
            plan.token = ""

    def local(self, plan: Plan) -> Decision:
        """The decision of a request served wholly from what is held."""
        levels = []
        for bid, rate, burst in plan.buckets:
            held = self.buckets[bid]
            levels.append((held.level + held.tokens + 1, rate, burst))
        return decide(levels, 0, 1.0)

    def granted(self, plan: Plan, ticket: Ticket, reply: Sequence[Any], base: str) -> Decision:
        """The source's answer: keep the grants, decide."""
        refused = int(reply[0])
        now = time.monotonic()
        levels = []
        for i, ((bid, rate, burst), want) in enumerate(zip(plan.buckets, ticket.wants,
                                                           strict=True)):
            level = float(reply[3 + 2 * i])
            grant = int(reply[4 + 2 * i])
            held = self.buckets.get(bid)
            if held is None:
                held = self.buckets[bid] = Held(rate, burst)
            if refused:
                levels.append((level + held.tokens, rate, burst))
                continue
            held.tokens += max(0, grant - 1)
            held.level, held.used = level - grant, now
            levels.append((level + (held.tokens + 1 if not want else 0), rate, burst))
        if refused:
            self.unclaim(plan, ticket)
            return decide(levels, refused, 1.0)
        if ticket.slot_want and plan.slots:
            grant = int(reply[1])
            pool = self.pools.setdefault(plan.slots[0], Pool())
            tokens = [f"{base}:{j}" for j in range(1, grant + 1)]
            pool.leased.update(dict.fromkeys(tokens, now))
            pool.free.extend(tokens[1:])
            plan.token, pool.ahead, pool.used = tokens[0], grant > 1, now
        return decide(levels, 0, 1.0)

    def release(self, plan: Plan) -> bool:
        """A request ended: keep its slot for the next one (True), or give it back to
        the source (False)."""
        assert plan.slots is not None
        pool = self.pools.get(plan.slots[0])
        if pool is None or plan.token not in pool.leased:
            return False
        if pool.ahead and len(pool.free) < CHUNK:
            pool.free.append(plan.token)
            return True
        del pool.leased[plan.token]
        return False

    def idle(self) -> tuple[list[tuple[str, Held]], list[tuple[str, list[str]]]]:
        """What has not been used for ``IDLE`` seconds, taken out to go back to the
        source: tokens per bucket, and free slots per key."""
        now = time.monotonic()
        tokens = [(bid, held) for bid, held in self.buckets.items() if now - held.used >= IDLE]
        for bid, _held in tokens:
            del self.buckets[bid]
        slots = []
        for key, pool in list(self.pools.items()):
            if now - pool.used >= IDLE:
                slots.append((key, pool.free))
                for token in pool.free:
                    del pool.leased[token]
                pool.free = []
                if not pool.leased:
                    del self.pools[key]
        return [(b, h) for b, h in tokens if h.tokens], [(k, f) for k, f in slots if f]

    def __bool__(self) -> bool:
        return bool(self.buckets or self.pools)


class Ahead:
    """The limits of the request path: from what this process holds, else from the
    source (which then grants a few ahead while it can)."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.held = Holdings(source.lease)
        self._sweep: asyncio.TimerHandle | None = None

    def claim(self, plan: Plan) -> Decision | Ticket:
        """The decision when what is held covers the request (no await); else the
        ticket to :meth:`fetch` the rest with."""
        ticket = self.held.claim(plan)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(IDLE, self._swept)
        if not any(ticket.wants) and not ticket.slot_want:
            return self.held.local(plan)
        return ticket

    async def fetch(self, plan: Plan, ticket: Ticket) -> Decision:
        """Ask the source for what the ticket misses (StoreDown: nothing is taken)."""
        name = slot_token()
        try:
            reply = await self.source.grant(plan, ticket, name)
        except BaseException:
            self.held.unclaim(plan, ticket)
            raise
        return self.held.granted(plan, ticket, reply, name)

    async def take(self, plan: Plan) -> Decision:
        """Take one token of each bucket and a slot."""
        got = self.claim(plan)
        return got if isinstance(got, Decision) else await self.fetch(plan, got)

    async def release(self, plan: Plan) -> None:
        """A request ended: its slot to this process's pool, or back to the source."""
        if plan.slots and not self.held.release(plan):
            await self.drop(plan)

    async def drop(self, plan: Plan) -> None:
        """Return a request's slot to the source (not to this process's pool)."""
        if plan.slots:
            await self.source.drop_slots(plan.slots[0], [plan.token])

    def _swept(self) -> None:
        self._sweep = None
        tokens, slots = self.held.idle()
        if tokens or slots:
            asyncio.get_running_loop().create_task(self._give_back(tokens, slots))
        if self.held:
            self._sweep = asyncio.get_running_loop().call_later(IDLE, self._swept)

    async def _give_back(self, tokens: list[tuple[str, Held]],
                         slots: list[tuple[str, list[str]]]) -> None:
        try:
            for bid, held in tokens:
                await self.source.give_back(bid, held)
            for key, names in slots:
                await self.source.drop_slots(key, names)
        except StoreDown:
            pass  # tokens come back as the bucket refills; slots' leases lapse
