"""Row 6: /start_server on a running endpoint changes nothing, and says so.

The settings of such a call used to be kept and applied at the next restart or reload
(a new SERVER_CLASS, NR_WORKERS up to 100000); now they are refused and nothing is kept.
"""

from __future__ import annotations

from tests.conftest import assert_error, assert_ok, wait_until


def test_start_on_a_running_endpoint_keeps_nothing(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}}})
    before = gw.server("echo")
    body = assert_error(gw.post("/start_server", {"SIGNATURE": "echo", "NR_WORKERS": 3,
                                                  "SERVER_CLASS": "slow"}), 409)
    assert "nothing changed" in body["ERROR"] and body["ERROR_TYPE"] == "conflict"
    assert "NR_WORKERS" in body["ERROR"] and "SERVER_CLASS" in body["ERROR"]
    # A reload (like a restart) starts from the settings the endpoint had.
    assert_ok(gw.post("/reload_server", {"SIGNATURE": "echo"}))
    wait_until(lambda: gw.server("echo")["generation"] > before["generation"]
               and gw.server("echo")["state"] == "READY", timeout=30,
               message="echo reloaded")
    after = gw.server("echo")
    assert after["module"] == "echo" and after["nr_workers"] == 1
    assert assert_ok(gw.run("echo", A=5))["echo"] == {"A": 5}
    # Without settings it is still the plain answer it always was.
    resp = gw.post("/start_server", {"SIGNATURE": "echo"})
    assert resp.status_code == 200 and "nothing changed" in resp.json()["RESULT"]


def test_a_stopped_endpoint_starts_with_checked_settings(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"spare": {"SERVER_CLASS": "echo", "DISABLED": True}}},
                  wait="settled")
    body = assert_error(gw.post("/start_server", {"SIGNATURE": "spare", "NR_WORKERS": 100000}), 400)
    assert "NR_WORKERS" in body["ERROR"]
    assert gw.server("spare")["state"] == "STOPPED"
    assert_ok(gw.post("/start_server", {"SIGNATURE": "spare", "NR_WORKERS": 2}))
    info = gw.wait_state("spare", "READY", timeout=30)
    assert info["nr_workers"] == 2
