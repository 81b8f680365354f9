"""Row 10 (GET half): GET /run never creates a job; it follows POST's rules otherwise."""

from __future__ import annotations

from tests.conftest import assert_error, assert_ok


def test_get_run_creates_no_job(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}}})
    for flag in ("true", "True", "1"):
        body = assert_error(gw.get("/run", params={"SIGNATURE": "echo", "ASYNC": flag}), 405)
        assert body["ERROR_TYPE"] == "method_not_allowed"
        assert "JOB_ID" not in body
    queues = gw.get("/system_status").json()["QUEUES"]
    assert queues["echo"]["depth"] == 0
    # The same rules as POST: a SIGNATURE, a known endpoint; then it runs.
    assert_error(gw.get("/run", params={"INPUT_VALUE": "x"}), 400)
    assert_error(gw.get("/run", params={"SIGNATURE": "ghost"}), 404)
    assert assert_ok(gw.get("/run", params={"SIGNATURE": "echo", "Q": "1"}))["echo"] == {"Q": "1"}
    # Jobs are created by POST only.
    resp = gw.post("/run", {"SIGNATURE": "echo", "ASYNC": True})
    assert resp.status_code == 202, resp.text
