"""Row L5: the original's support script, unchanged, reports with TLS on and with ``--host ::``.

The script builds ``http://SERVER:SERVER_PORT/support_update_status`` and posts with
``requests``. With ``TLS_CERT`` set its connections to the front are carried over TLS
(checked against the configured certificate); with ``--host ::`` it is given a
bracketed IPv6 loopback address. In both cases its reports arrive, and a caller that
is not the support process is still refused.
"""

from __future__ import annotations

import requests

from tests.conftest import assert_error, assert_ok, wait_until
from tests.integration.test_front_tls import self_signed
from tests.security.test_r11_loopback import has_ipv6

SUPPORT = {"support_process": {"HOST": "NO_HOST", "PING_INTERVAL": 0.3}}


def reported(gw, **kw) -> dict:
    """The support script's report, once one has arrived."""
    def arrived():
        resp = gw.get("/system_status", **kw)
        return resp.status_code == 200 and resp.json()["SUPPORT_STATUS"].get("support_process")

    report = wait_until(arrived, timeout=30, message="a support report")
    assert "available_memory" in report and "msg" in report
    return report


def test_support_reports_to_a_tls_front(gateways, tmp_path):
    cert, key = self_signed(tmp_path)
    gw = gateways({"TLS_CERT": cert, "TLS_KEY": key, "HEALTH_SAMPLE_INTERVAL": 0.5,
                   "CONFIG_ENDPOINTS": SUPPORT}, wait=None)
    gw.base = f"https://127.0.0.1:{gw.port}"
    reported(gw, verify=cert)
    assert_error(gw.post("/support_update_status", {"SIGNATURE": "support_process"},
                         verify=cert), 403)


def test_support_reports_to_a_dual_stack_front(gateways):
    assert has_ipv6(), "this test needs IPv6 loopback (::1)"
    gw = gateways({"HEALTH_SAMPLE_INTERVAL": 0.5, "CONFIG_ENDPOINTS": SUPPORT}, host="::",
                  wait=None)
    gw.base = f"http://[::1]:{gw.port}"
    reported(gw)
    for base in (f"http://[::1]:{gw.port}", f"http://127.0.0.1:{gw.port}"):
        resp = requests.post(base + "/support_update_status", json={"SIGNATURE": None},
                             timeout=10)
        assert_error(resp, 403)
    assert assert_ok(gw.get("/system_status"))["SUPPORT_STATUS"]["support_process"]
