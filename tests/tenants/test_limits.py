"""Rate limits: exact across front processes and across gateways sharing Redis; 429s."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import assert_error, assert_ok, free_port, wait_until
from tests.tenants.conftest import call, make_key, ready

CLIENTS = 32


def hammer(gateways: list, key: str, total: int) -> list[int]:
    """``total`` requests from 32 clients, spread over the gateways; their statuses."""

    def one(i: int) -> int:
        return call(gateways[i % len(gateways)], key).status_code

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(one, range(total)))


def limited_config(**extra):
    return {"API_KEYS": True, "GATEWAY_WORKERS": 2,
            "CONFIG_ENDPOINTS": {"echo": {"SERVER_CLASS": "echo", "NR_WORKERS": 2},
                                 "slow": {"SERVER_CLASS": "slow", "NR_WORKERS": 4}}, **extra}


@pytest.fixture(scope="module")
def gw(module_gateways):
    return ready(module_gateways(limited_config()))


def test_burst_is_exact_across_front_processes(gw):
    key = make_key(gw, RATE="100/day", BURST=100)["KEY"]
    statuses = hammer([gw], key, 300)
    assert statuses.count(200) == 100, statuses
    assert statuses.count(429) == 200


def test_429_says_when_to_come_back(gw):
    key = make_key(gw, RATE="1/minute", BURST=2)["KEY"]
    first = call(gw, key)
    assert_ok(first)
    assert first.headers["RateLimit-Limit"] == "2"
    assert first.headers["RateLimit-Remaining"] == "1"
    assert_ok(call(gw, key))
    refused = call(gw, key)
    body = assert_error(refused, 429)
    assert body["ERROR_TYPE"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert 60 <= int(refused.headers["RateLimit-Reset"]) <= 120


def test_endpoint_bucket_is_its_own(gw):
    key = make_key(gw, ENDPOINT_LIMITS={"slow": {"RATE": "1/hour", "BURST": 1}})["KEY"]
    assert_ok(call(gw, key, "slow", SECONDS=0))
    assert_error(call(gw, key, "slow", SECONDS=0), 429)
    for _ in range(5):
        assert_ok(call(gw, key, "echo"))


def test_max_concurrent(gw):
    check_max_concurrent(gw)


def test_max_concurrent_in_redis(gateways, redis_url):
    url = f"{redis_url}?prefix=bis-test-{os.urandom(4).hex()}"
    check_max_concurrent(ready(gateways(limited_config(TENANTS_REDIS=url))))


def check_max_concurrent(gw):
    key = make_key(gw, MAX_CONCURRENT=2)["KEY"]
    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda _i: call(gw, key, "slow", SECONDS=2).status_code,
                                 range(6)))
    assert statuses.count(200) == 2 and statuses.count(429) == 4, statuses
    # The slots came back when the requests ended.
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda _i: call(gw, key, "slow", SECONDS=0).status_code,
                             range(2))) == [200, 200]


def test_burst_is_exact_across_two_gateways_sharing_redis(gateways, redis_url):
    url = f"{redis_url}?prefix=bis-test-{os.urandom(4).hex()}"
    config = limited_config(TENANTS_REDIS=url)
    one, two = ready(gateways(config)), ready(gateways(config))
    made = make_key(one, RATE="100/day", BURST=100)
    assert_ok(call(two, made["KEY"]))  # a key made on one gateway works on the other
    statuses = hammer([one, two], made["KEY"], 300)
    assert statuses.count(200) == 99, statuses
    assert statuses.count(429) == 201
    # Revoked on one gateway, refused on the other.
    assert_ok(one.post("/keys/revoke", {"KEY_ID": made["KEY_ID"]}))
    wait_until(lambda: call(two, made["KEY"]).status_code == 401, timeout=1.0,
               message="the other gateway refuses the revoked key within 1 s")


def test_unreachable_redis_fails_closed(gateways):
    gw = ready(gateways(limited_config(TENANTS_REDIS=f"redis://127.0.0.1:{free_port()}/0")))
    body = assert_error(gw.post("/keys", {"TENANT": "acme"}), 503)
    assert body["ERROR_TYPE"] == "unavailable"
    refused = call(gw, "bis_any-key")
    assert assert_error(refused, 503)["ERROR_TYPE"] == "unavailable"
    assert refused.headers["Retry-After"] == "1"


def test_unreachable_redis_fails_open_when_asked(gateways, tmp_path):
    from tests.services import start_redis

    (tmp_path / "redis").mkdir()
    service, url = start_redis(tmp_path / "redis")
    try:
        gw = ready(gateways(limited_config(TENANTS_REDIS=url, TENANTS_FAIL_OPEN=True)))
        key = make_key(gw, RATE="1/hour", BURST=3, QUOTA={"REQUESTS": 100})["KEY"]
        assert_ok(call(gw, key))
        # Both front processes cache the key: concurrent connections reach both.
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _i: call(gw, key), range(24)))
    finally:
        service.stop()
    # Redis is gone: the cached key is served, its limit counted in memory (full again).
    statuses = [call(gw, key).status_code for _ in range(6)]
    assert statuses == [200, 200, 200, 429, 429, 429], statuses
    # A key never seen cannot be checked: 503 even when failing open.
    assert assert_error(call(gw, "bis_never-seen"), 503)["ERROR_TYPE"] == "unavailable"
