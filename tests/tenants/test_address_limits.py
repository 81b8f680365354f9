"""ANON_LIMIT: with API keys off, a token bucket per client address, exact across front
processes; X-Forwarded-For counts only from TRUSTED_PROXIES (gateway/address_limits.py)."""

from __future__ import annotations

import pytest
import requests

from tests.conftest import Gateway
from tests.tenants.conftest import ready

LIMIT = {"RATE": "1/hour", "BURST": 5}


def statuses(gw: Gateway, n: int, forwarded: str | None = None) -> list[int]:
    """``n`` calls, each on a new connection (spread over the front processes)."""
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    return [requests.post(gw.url("/run"), json={"SIGNATURE": "echo", "INPUT_VALUE": i},
                          headers=headers, timeout=30).status_code for i in range(n)]


@pytest.fixture
def direct(gateways) -> Gateway:
    return ready(gateways({"ANON_LIMIT": LIMIT, "GATEWAY_WORKERS": 2, "CONFIG_ENDPOINTS": {
        "echo": {"SERVER_CLASS": "echo", "NR_WORKERS": 1}}}))


def test_the_limit_is_exact_across_front_processes(direct):
    got = statuses(direct, 12)
    assert sorted(got) == [200] * 5 + [429] * 7, got
    refused = requests.post(direct.url("/run"), json={"SIGNATURE": "echo"}, timeout=30)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["ERROR_TYPE"] == "rate_limited"


def test_a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(direct):
    # Each call claims another client: all of them are the peer's, one bucket.
    got = [statuses(direct, 1, forwarded=f"198.51.100.{i}")[0] for i in range(8)]
    assert sorted(got) == [200] * 5 + [429] * 3, got


def test_behind_a_trusted_proxy_each_client_has_its_bucket(gateways):
    gw = ready(gateways({"ANON_LIMIT": LIMIT, "TRUSTED_PROXIES": ["127.0.0.0/8"],
                         "GATEWAY_WORKERS": 2, "CONFIG_ENDPOINTS": {
                             "echo": {"SERVER_CLASS": "echo", "NR_WORKERS": 1}}}))
    assert statuses(gw, 6, "203.0.113.7") == [200] * 5 + [429]
    assert statuses(gw, 6, "203.0.113.8") == [200] * 5 + [429]
    # What the client wrote at the left counts for nothing: the proxy appended .7.
    assert statuses(gw, 1, "192.0.2.1, 203.0.113.7") == [429]
    # Trusted hops are skipped from the right: the client is the first one that is not.
    assert statuses(gw, 1, "203.0.113.9, 127.0.0.5") == [200]


def test_keys_off_and_no_limit_is_today(gateways):
    gw = ready(gateways({"CONFIG_ENDPOINTS": {"echo": {"SERVER_CLASS": "echo",
                                                       "NR_WORKERS": 1}}}))
    assert statuses(gw, 12) == [200] * 12
