"""Tokens and slots taken ahead from a real Redis: never more than the limits, given back
when idle, and most requests served without a round trip."""

from __future__ import annotations

import asyncio
import random

import redis

from basic_inference_server.tenants.allot import CHUNK, IDLE, RedisLimits
from basic_inference_server.tenants.limits import Plan
from basic_inference_server.tenants.resp import RespClient

DAY = 1 / 86400


class Counted(RespClient):
    """The lean client, counting the rate-limit script's round trips."""

    calls = 0

    async def call_encoded(self, command):
        self.calls += 1
        return await super().call_encoded(command)


def limits(url: str, prefix: str) -> RedisLimits:
    """The limits of one front process."""
    return RedisLimits(Counted(url), prefix)


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "not true in time"
        await asyncio.sleep(0.02)


def test_a_burst_is_exact_across_processes_taking_ahead(redis_url, redis_prefix):
    async def run():
        procs = [limits(redis_url, redis_prefix) for _ in range(3)]
        plan = ([("k", 100 * DAY, 100)], None)
        allowed = 0
        rng = random.Random(7)
        for _ in range(400):
            decision = await rng.choice(procs).take(Plan(*plan))
            allowed += decision.allowed
        calls = sum(p.lean.calls for p in procs)
        for p in procs:
            p.lean.close()
        return allowed, calls

    allowed, calls = asyncio.run(run())
    assert allowed == 100
    assert calls < 400  # the first ones were served from tokens taken ahead


def test_tokens_not_used_go_back_when_idle(redis_url, redis_prefix):
    async def run():
        one, two = limits(redis_url, redis_prefix), limits(redis_url, redis_prefix)
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
        one.lean.close()
        two.lean.close()
        return got

    assert asyncio.run(run()) == 24


def test_a_refused_request_gives_back_what_it_took_here(redis_url, redis_prefix):
    async def run():
        proc = limits(redis_url, redis_prefix)
        plan = ([("k", 1000.0, 1000), ("k:ep", DAY, 1)], None)
        assert (await proc.take(Plan(*plan))).allowed
        held = proc.held.buckets["k"].tokens
        assert held == CHUNK - 1
        refused = await proc.take(Plan(*plan))
        assert not refused.allowed and refused.refused_by == 2
        assert proc.held.buckets["k"].tokens == held
        proc.lean.close()

    asyncio.run(run())


def test_few_slots_are_never_held_ahead(redis_url, redis_prefix):
    async def run():
        proc = limits(redis_url, redis_prefix)
        first, second, third = (Plan([], ("k:slots", 2)) for _ in range(3))
        assert (await proc.take(first)).allowed and (await proc.take(second)).allowed
        assert not (await proc.take(third)).allowed
        # Back to Redis, not to a pool (another process may need it), within LAZY.
        await proc.release(first)
        other = limits(redis_url, redis_prefix)

        async def free():
            return (await other.take(Plan([], ("k:slots", 2)))).allowed

        await until(free, timeout=1)
        assert not proc.held.pools["k:slots"].free
        proc.lean.close()
        other.lean.close()

    asyncio.run(run())


def test_many_slots_are_pooled_then_given_back(redis_url, redis_prefix):
    direct = redis.Redis.from_url(redis_url)
    slots = redis_prefix + "k:slots"

    async def run():
        proc = limits(redis_url, redis_prefix)
        for _ in range(50):
            plan = Plan([], ("k:slots", 1000))
            assert (await proc.take(plan)).allowed
            await proc.release(plan)
        assert proc.lean.calls == 1 and direct.zcard(slots) == CHUNK

        async def returned():
            return direct.zcard(slots) == 0

        await until(returned, timeout=IDLE * 10)
        proc.lean.close()

    try:
        asyncio.run(run())
    finally:
        direct.close()
