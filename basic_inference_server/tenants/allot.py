"""Tokens and concurrency slots a front process takes from Redis ahead of its requests.

With ``TENANTS_REDIS`` a limited request would cost a Redis round trip: a round trip
of latency and about 20 µs of the front's CPU however lean the client, over the 10 %
the limits may cost. So while a bucket is far from empty a front process takes a few
of its tokens at once, and serves the next requests of the key from them; slots
likewise. What it holds is the bucket's and the key's, taken in Redis by the same
atomic script: no key ever gets more than its limits, across any number of front
processes and gateways.

- A grant is one token, plus up to ``CHUNK - 1`` ahead while the bucket holds at
  least ``RESERVE`` times the grant. Near empty, grants are of one: the last tokens of
  a bucket are never taken ahead.
- A request may be refused while another front process holds tokens it took ahead
  (at most ``CHUNK - 1`` per bucket and process); a process gives back what it has not
  used after ``IDLE`` seconds without a request of that key.
- A slot taken ahead returns to the process's pool when its request ends, while the
  key had ``RESERVE`` times the grant free; else, and once idle, it goes back to Redis.
  A pooled slot is used only in the first half of its lease.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from .limits import LEASE, LUA, LUA_GIVE_BACK, Decision, Plan, decide, redis_args, slot_token
from .resp import RespClient, RespError, bulks

CHUNK = 16
RESERVE = 8
IDLE = 0.2


@dataclass
class Held:
    """Tokens of one bucket this process took ahead."""

    rate: float
    burst: int
    tokens: int = 0
    level: float = 0.0  # the bucket in Redis after the last grant (for RateLimit-*)
    used: float = 0.0


@dataclass
class Pool:
    """Slots of one key this process holds: each slot's token and when it was granted."""

    leased: dict[str, float] = field(default_factory=dict)
    free: list[str] = field(default_factory=list)
    ahead: bool = False  # the last grant was of more than one: slots were plentiful
    used: float = 0.0


@dataclass
class Ticket:
    """What a request took here, and what it asks Redis for (0: nothing)."""

    wants: list[int]
    slot_want: int


class Holdings:
    """One front process's tokens and slots taken ahead (used on its event loop only)."""

    def __init__(self) -> None:
        self.buckets: dict[str, Held] = {}
        self.pools: dict[str, Pool] = {}

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
                if now - pool.leased[token] < LEASE / 2:
                    plan.token, pool.used = token, now
                    break
                del pool.leased[token]  # its lease lapses in Redis on its own
            else:
                slot_want = CHUNK
        return Ticket(wants, slot_want)

    def unclaim(self, plan: Plan, ticket: Ticket) -> None:
        """The request was refused, or Redis did not answer: give back what it took here."""
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

    def granted(self, plan: Plan, ticket: Ticket, reply: list[object], base: str) -> Decision:
        """Redis's answer (see :data:`.limits.LUA`): keep the grants, decide."""
        refused = int(reply[0])  # type: ignore[call-overload]
        now = time.monotonic()
        levels = []
        for i, ((bid, rate, burst), want) in enumerate(zip(plan.buckets, ticket.wants,
                                                           strict=True)):
            level = float(reply[3 + 2 * i])  # type: ignore[arg-type]
            grant = int(reply[4 + 2 * i])  # type: ignore[call-overload]
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
            grant = int(reply[1])  # type: ignore[call-overload]
            pool = self.pools.setdefault(plan.slots[0], Pool())
            tokens = [f"{base}:{j}" for j in range(1, grant + 1)]
            pool.leased.update(dict.fromkeys(tokens, now))
            pool.free.extend(tokens[1:])
            plan.token, pool.ahead, pool.used = tokens[0], grant > 1, now
        return decide(levels, 0, 1.0)

    def release(self, plan: Plan) -> bool:
        """A request ended: keep its slot for the next one (True), or give it back to
        Redis (False)."""
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
        """What has not been used for ``IDLE`` seconds, taken out to go back to Redis:
        tokens per bucket, and free slots per key."""
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


class RedisLimits:
    """The limits of the request path in Redis, with what this process holds ahead.

    Errors are the client's (:class:`.resp.RespError`, OSError, TimeoutError): the store
    turns them into ``StoreDown``.
    """

    SCRIPT_SHA = hashlib.sha1(LUA.encode()).hexdigest()

    def __init__(self, lean: RespClient, prefix: str) -> None:
        self.lean = lean
        self.prefix = prefix
        self.held = Holdings()
        # Per plan shape and wants: the script's call encoded, before and after the name.
        self._commands: dict[Any, tuple[bytes, bytes]] = {}
        self._sweep: asyncio.TimerHandle | None = None

    def _command(self, plan: Plan, ticket: Ticket, name: str) -> bytes:
        """The plan's EVALSHA, encoded. All of it but the slots' name is the same for
        every request of a key to an endpoint: that part is encoded once."""
        shape = (tuple(plan.buckets), plan.slots, tuple(ticket.wants), ticket.slot_want)
        parts = self._commands.get(shape)
        if parts is None:
            keys, argv = redis_args(plan, self.prefix, ticket.wants, ticket.slot_want, name,
                                    RESERVE)
            args = ("EVALSHA", self.SCRIPT_SHA, len(keys), *keys, *argv)
            at = 3 + len(keys) + 3  # the name's place (see redis_args)
            parts = (b"*%d\r\n" % len(args) + bulks(args[:at]), bulks(args[at + 1:]))
            if len(self._commands) >= 10000:
                self._commands.clear()
            self._commands[shape] = parts
        return parts[0] + bulks((name,)) + parts[1]

    async def take(self, plan: Plan) -> Decision:
        """Take one token of each bucket and a slot: from what is held, else from Redis."""
        ticket = self.held.claim(plan)
        self._sweep_later()
        if not any(ticket.wants) and not ticket.slot_want:
            return self.held.local(plan)
        name = slot_token()
        try:
            try:
                reply = await self.lean.call_encoded(self._command(plan, ticket, name))
            except RespError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                # The first call on this server (or after SCRIPT FLUSH): send the script.
                keys, argv = redis_args(plan, self.prefix, ticket.wants, ticket.slot_want,
                                        name, RESERVE)
                reply = await self.lean.call("EVAL", LUA, len(keys), *keys, *argv)
        except BaseException:
            self.held.unclaim(plan, ticket)
            raise
        return self.held.granted(plan, ticket, reply, name)

    async def release(self, plan: Plan) -> None:
        """A request ended: its slot to this process's pool, or back to Redis (a command
        not waited for)."""
        if plan.slots and not self.held.release(plan):
            await self.lean.send("ZREM", self.prefix + plan.slots[0], plan.token)

    def _sweep_later(self) -> None:
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(IDLE, self._swept)

    def _swept(self) -> None:
        self._sweep = None
        tokens, slots = self.held.idle()
        if tokens or slots:
            asyncio.get_running_loop().create_task(self._give_back(tokens, slots))
        if self.held:
            self._sweep_later()

    async def _give_back(self, tokens: list[tuple[str, Held]],
                         slots: list[tuple[str, list[str]]]) -> None:
        try:
            for bid, held in tokens:
                await self.lean.send("EVAL", LUA_GIVE_BACK, 1, self.prefix + "bucket:" + bid,
                                     repr(held.rate), held.burst, held.tokens)
            for key, names in slots:
                await self.lean.send("ZREM", self.prefix + key, *names)
        except (RespError, OSError):
            pass  # tokens come back as the bucket refills; slots' leases lapse
