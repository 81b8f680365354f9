"""Who the client is for ANON_LIMIT (gateway/address_limits.py)."""

from __future__ import annotations

import ipaddress

from basic_inference_server.gateway.address_limits import client_address
from basic_inference_server.tenants.address_settings import check_anon_limit, check_proxies
from basic_inference_server.wire.message import Request

PROXIES = [ipaddress.ip_network("10.0.0.0/8")]


def request(peer: str, *forwarded: str) -> Request:
    headers = [(b"x-forwarded-for", f.encode()) for f in forwarded]
    return Request("POST", "/run", "", headers, b"", "rid", True, (peer, 5555))


def test_the_peer_unless_it_is_a_trusted_proxy():
    assert client_address(request("203.0.113.1", "1.2.3.4"), PROXIES) == "203.0.113.1"
    assert client_address(request("203.0.113.1", "1.2.3.4"), []) == "203.0.113.1"
    assert client_address(request("10.0.0.2", "1.2.3.4"), PROXIES) == "1.2.3.4"


def test_read_from_the_right_past_trusted_hops():
    assert client_address(request("10.0.0.2", "6.6.6.6, 1.2.3.4, 10.1.1.1"), PROXIES) == "1.2.3.4"
    assert client_address(request("10.0.0.2", "6.6.6.6", "1.2.3.4"), PROXIES) == "1.2.3.4"
    assert client_address(request("10.0.0.2", "10.0.0.9"), PROXIES) == "10.0.0.9"
    assert client_address(request("10.0.0.2"), PROXIES) == "10.0.0.2"
    assert client_address(request("10.0.0.2", "2001:db8::1"), PROXIES) == "2001:db8::1"


def test_garbage_counts_against_the_proxy_that_passed_it():
    assert client_address(request("10.0.0.2", "not-an-address"), PROXIES) == "10.0.0.2"
    assert client_address(request("10.0.0.2", "junk, 10.0.0.7"), PROXIES) == "10.0.0.7"


def test_the_settings_are_checked():
    assert check_anon_limit({"RATE": "10/second", "BURST": 20}) is None
    assert check_anon_limit(None) is None
    assert "RATE" in check_anon_limit({"RATE": "often"})
    assert check_proxies(["10.0.0.0/8", "192.0.2.1", "::1"]) is None
    assert "CIDR" in check_proxies(["10.0.0.0/33"])
