"""X-Request-ID: the caller's (when sane) or a new one, in the answer, the server and the log."""

from __future__ import annotations

import re

import requests

from tests.conftest import assert_ok, wait_until


def test_request_ids_follow_each_request(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1, "TCP_PORT": True}}})
    resp = gw.post("/run", {"SIGNATURE": "echo", "A": 1}, headers={"X-Request-ID": "trace-42.a:b"})
    assert_ok(resp)
    assert resp.headers["X-Request-ID"] == "trace-42.a:b"
    # None given, or one that is not sane: a new one is made.
    made = assert_ok_id(gw.post("/run", {"SIGNATURE": "echo"}))
    bad = assert_ok_id(gw.post("/run", {"SIGNATURE": "echo"},
                               headers={"X-Request-ID": "x" * 300}))
    assert made != bad
    # Errors and management answers carry one too.
    assert re.fullmatch(r"[0-9a-f]{16}", gw.post("/run", {"SIGNATURE": "nope"}).headers["X-Request-ID"])
    assert gw.get("/list_servers", headers={"X-Request-ID": "mgmt-1"}).headers["X-Request-ID"] == "mgmt-1"
    # The endpoint server got it from the front: it answers with it on its own port too.
    port = gw.server("echo")["port"]
    direct = requests.post(f"http://127.0.0.1:{port}/run", json={}, headers={"X-Request-ID": "srv-7"},
                           timeout=10)
    assert direct.headers["X-Request-ID"] == "srv-7"
    # The access log line names it.
    wait_until(lambda: "id trace-42.a:b" in gw.log_text(), timeout=5,
               message="the access log line carries the request id")


def assert_ok_id(resp: requests.Response) -> str:
    assert_ok(resp)
    rid = resp.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{16}", rid), rid
    return rid
