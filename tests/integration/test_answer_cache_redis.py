"""The answer cache in Redis (CACHE_REDIS): one cache for every front process and every
gateway that names it, its bounds held over all of them, and a Redis that does not answer
costs the cache, never the request."""

from __future__ import annotations

import os

import pytest
import redis

from tests.conftest import Gateway, free_port, wait_until
from tests.integration.test_answer_cache import cache_count, runs
from tests.tenants.conftest import call, make_key, ready


def cached(url: str, prefix: str) -> tuple[int, int]:
    """The echo route's entries in Redis and the members of its index."""
    client = redis.Redis.from_url(url)
    try:
        entries = len(set(client.scan_iter(f"{prefix}:ac:{{echo}}:e:*")))  # SCAN may repeat
        return entries, client.zcard(f"{prefix}:ac:{{echo}}:i")
    finally:
        client.close()


def settled(url: str, prefix: str) -> None:
    """Until the route holds 3 entries, never more (MAX_ENTRIES 3 over 4 processes)."""
    def three() -> bool:
        entries, index = cached(url, prefix)
        assert entries <= 3 and index <= 3, (entries, index)
        return (entries, index) == (3, 3)
    wait_until(three, timeout=10, message="3 entries in Redis")


@pytest.fixture
def shared(gateways, redis_url) -> tuple[Gateway, Gateway, str]:
    """Two gateways of two front processes each, on one CACHE_REDIS; the prefix."""
    prefix = f"bis-test-{os.urandom(4).hex()}"
    config = {"TENANTS_REDIS": f"{redis_url}?prefix={prefix}",
              "CACHE_REDIS": f"{redis_url}?prefix={prefix}", "API_KEYS": True,
              "GATEWAY_WORKERS": 2, "CONFIG_ENDPOINTS": {
                  "echo": {"SERVER_CLASS": "echo", "NR_WORKERS": 1,
                           "CACHE": {"TTL": 60, "MAX_ENTRIES": 3}}}}
    return ready(gateways(config)), ready(gateways(config)), prefix


def test_gateways_on_one_redis_share_their_entries(shared):
    one, two, _prefix = shared
    key = make_key(one, TENANT="acme")["KEY"]  # the keys are in the same Redis
    first = call(one, key, "echo", INPUT_VALUE="said once").json()
    again = call(two, key, "echo", INPUT_VALUE="said once").json()
    assert again["call_id"] == first["call_id"], "the second gateway's endpoint did not run"
    assert cache_count(two, "echo", "hit") == 1


def test_the_bounds_hold_over_every_front_process(shared, redis_url):
    one, two, prefix = shared
    key = make_key(one, TENANT="acme")["KEY"]
    for i in range(12):  # on new connections: spread over both gateways' processes
        assert call((one, two)[i % 2], key, "echo", INPUT_VALUE=f"v{i}").status_code == 200
    # (a write is not waited for: it may still be on its way when the answer is)
    settled(redis_url, prefix)
    hits, misses = cache_count(one, "echo", "hit"), cache_count(one, "echo", "miss")
    latest = runs(one, key, INPUT_VALUE="v11")  # written last, by the other gateway
    assert runs(two, key, INPUT_VALUE="v11") == latest
    assert cache_count(one, "echo", "hit") == hits + 1
    runs(one, key, INPUT_VALUE="v0")  # the first written: the least recently used, gone
    assert cache_count(one, "echo", "miss") == misses + 1
    settled(redis_url, prefix)


def test_a_redis_that_does_not_answer_costs_the_cache_not_the_request(gateways):
    gw = ready(gateways({"CACHE_REDIS": f"redis://127.0.0.1:{free_port()}", "CONFIG_ENDPOINTS": {
        "echo": {"SERVER_CLASS": "echo", "NR_WORKERS": 1, "CACHE": {}}}}))
    ids = [gw.post("/run", json={"SIGNATURE": "echo", "INPUT_VALUE": "same"}) for _ in range(3)]
    assert [r.status_code for r in ids] == [200] * 3
    assert len({r.json()["call_id"] for r in ids}) == 3, "each one ran: nothing was kept"
    assert cache_count(gw, "echo", "error") == 3
    assert cache_count(gw, "echo", "hit") == 0
