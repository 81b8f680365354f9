"""Row 11, loopback half: with ``--host ::`` IPv4 loopback arrives as ``::ffff:127.0.0.1``.

Loopback is no privilege any more, so the mapped form needs no special case: from it,
as from ``::1``, a management call without the token is refused (401) and changes
nothing, and the same call with the token works.
"""

from __future__ import annotations

import socket

import pytest
import requests

from tests.conftest import ADMIN_TOKEN, assert_error, assert_ok

CONFIG = {"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}}}


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def gw(module_gateways):
    assert has_ipv6(), "this test needs IPv6 loopback (::1)"
    return module_gateways(CONFIG, host="::")


@pytest.mark.parametrize("base", ["http://127.0.0.1:{port}", "http://[::1]:{port}"])
def test_loopback_over_a_dual_stack_listener_needs_the_token(gw, base):
    url = base.format(port=gw.port)
    workers = gw.server("echo")["nr_workers"]
    body = {"SIGNATURE": "echo", "NR_WORKERS": workers + 1}
    err = assert_error(requests.post(url + "/update_workers", json=body, timeout=10), 401)
    assert err["ERROR_TYPE"] == "unauthorized"
    assert_error(requests.get(url + "/list_servers", timeout=10), 401)
    assert gw.server("echo")["nr_workers"] == workers

    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert_ok(requests.post(url + "/update_workers", json=body, headers=auth, timeout=10))
    assert gw.server("echo")["nr_workers"] == workers + 1
    assert "echo" in assert_ok(requests.get(url + "/list_servers", headers=auth,
                                            timeout=10))["SERVERS"]
