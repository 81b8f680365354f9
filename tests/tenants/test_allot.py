"""Tokens and slots taken ahead, from a real Redis and from the gateway's shared memory:
never more than the limits, given back when idle, and most requests served without a
round trip or a lock."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest
import redis

from basic_inference_server.tenants.allot import CHUNK, IDLE, Ahead
from basic_inference_server.tenants.limits import Plan
from basic_inference_server.tenants.redis_limits import RedisSource
from basic_inference_server.tenants.resp import RespClient
from basic_inference_server.tenants.shared import SharedLimits
from tests.conftest import until

DAY = 1 / 86400


class Counted(RespClient):
    """The lean client, counting the rate-limit script's round trips."""

    calls = 0

    async def call_encoded(self, command):
        self.calls += 1
        return await super().call_encoded(command)


class CountedShared(SharedLimits):
    """The shared table, counting the grants taken under its lock."""

    calls = 0

    def grant_now(self, plan, ticket):
        self.calls += 1
        return super().grant_now(plan, ticket)


def calls(limits: Ahead) -> int:
    source = limits.source
    return source.lean.calls if isinstance(source, RedisSource) else source.calls


class Fronts:
    """Makes the limits of one more front process, all on one store."""

    def __init__(self, make: Callable[[], Ahead]) -> None:
        self.make = make
        self.made: list[Ahead] = []

    def __call__(self) -> Ahead:
        self.made.append(self.make())
        return self.made[-1]

    def close(self) -> None:
        """Close the Redis connections (on the loop that made them)."""
        for limits in self.made:
            if isinstance(limits.source, RedisSource):
                limits.source.lean.close()


@pytest.fixture(params=["redis", "shared"])
def front(request) -> Fronts:
    if request.param == "redis":
        url, prefix = (request.getfixturevalue(n) for n in ("redis_url", "redis_prefix"))
        return Fronts(lambda: Ahead(RedisSource(Counted(url), prefix)))
    shared = CountedShared(rows=4, slots=256)
    return Fronts(lambda: Ahead(shared))


def test_a_burst_is_exact_across_processes_taking_ahead(front):
    async def run():
        procs = [front() for _ in range(3)]
        allowed = 0
        rng = random.Random(7)
        for _ in range(400):
            decision = await rng.choice(procs).take(Plan([("k", 100 * DAY, 100)]))
            allowed += decision.allowed
        front.close()
        shared = not isinstance(procs[0].source, RedisSource)
        return allowed, calls(procs[0]) if shared else sum(calls(p) for p in procs)

    allowed, trips = asyncio.run(run())
    assert allowed == 100
    assert trips < 400  # the first ones were served from tokens taken ahead


def test_tokens_not_used_go_back_when_idle(front):
    async def run():
        one, two = front(), front()
        plan = ([("k", 10 * DAY, 24)], None)
        assert (await one.take(Plan(*plan))).allowed  # 24 / 8: one more taken ahead
        assert one.held.buckets["k"].tokens == 2
        got = 1
        while (await two.take(Plan(*plan))).allowed:
            got += 1
        assert got == 22  # two holds none of one's

        async def back():
            return (await two.take(Plan(*plan))).allowed

        await until(back, timeout=IDLE * 10)  # one gave its tokens back
        got += 1
        while (await two.take(Plan(*plan))).allowed:
            got += 1
        front.close()
        return got

    assert asyncio.run(run()) == 24


def test_a_refused_request_gives_back_what_it_took_here(front):
    async def run():
        proc = front()
        plan = ([("k", 1000.0, 1000), ("k:ep", DAY, 1)], None)
        assert (await proc.take(Plan(*plan))).allowed
        held = proc.held.buckets["k"].tokens
        assert held == CHUNK - 1
        refused = await proc.take(Plan(*plan))
        assert not refused.allowed and refused.refused_by == 2
        assert proc.held.buckets["k"].tokens == held
        front.close()

    asyncio.run(run())


def test_few_slots_are_never_held_ahead(front):
    async def run():
        proc = front()
        first, second, third = (Plan([], ("k:slots", 2)) for _ in range(3))
        assert (await proc.take(first)).allowed and (await proc.take(second)).allowed
        assert not (await proc.take(third)).allowed
        # Back to the store, not to a pool (another process may need it).
        await proc.release(first)
        other = front()

        async def free():
            return (await other.take(Plan([], ("k:slots", 2)))).allowed

        await until(free, timeout=1)
        assert not proc.held.pools["k:slots"].free
        front.close()

    asyncio.run(run())


def test_many_slots_are_pooled_then_given_back(front):
    async def run():
        proc = front()
        for _ in range(50):
            plan = Plan([], ("k:slots", 1000))
            assert (await proc.take(plan)).allowed
            await proc.release(plan)
        assert calls(proc) == 1 and len(proc.held.pools["k:slots"].free) == CHUNK
        # Another process can take all but what this one pools, then all once it is idle.
        other = front()
        held = []
        for _ in range(1000 - CHUNK):
            plan = Plan([], ("k:slots", 1000))
            assert (await other.take(plan)).allowed
            held.append(plan)
        assert not (await other.take(Plan([], ("k:slots", 1000)))).allowed

        async def returned():
            return (await other.take(Plan([], ("k:slots", 1000)))).allowed

        await until(returned, timeout=IDLE * 10)
        front.close()

    asyncio.run(run())


def test_slots_in_redis_are_leases(redis_url, redis_prefix):
    direct = redis.Redis.from_url(redis_url)
    slots = redis_prefix + "k:slots"

    async def run():
        proc = Ahead(RedisSource(Counted(redis_url), redis_prefix))
        plan = Plan([], ("k:slots", 1000))
        assert (await proc.take(plan)).allowed
        assert direct.zcard(slots) == CHUNK
        assert direct.ttl(slots) > 3000  # a gateway killed mid-request: they lapse

        await proc.release(plan)  # pooled, then given back once idle

        async def returned():
            return direct.zcard(slots) == 0

        await until(returned, timeout=IDLE * 10)
        proc.source.lean.close()

    try:
        asyncio.run(run())
    finally:
        direct.close()
