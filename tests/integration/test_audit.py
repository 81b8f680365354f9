"""The audit trail on a live gateway: each call of an admin route that changes state is
one record (who, what, when, masked arguments, outcome), in /history and in the
append-only file; refused attempts are counted per address and minute."""

from __future__ import annotations

import json
import subprocess

import pytest

from basic_inference_server.audit import token_id
from basic_inference_server.gateway.api_table import ROUTES
from tests.conftest import ADMIN_TOKEN, SHUTDOWN_CMD, Gateway, GatewayPool

CONFIG = {"API_KEYS": True, "GATEWAY_WORKERS": 2, "CONFIG_ENDPOINTS": {
    "echo": {"NR_WORKERS": 1},
    "spare": {"SERVER_CLASS": "echo", "DISABLED": True, "NR_WORKERS": 1},
    "clf": {"SERVER_CLASS": "echo", "NR_WORKERS": 1, "VERSIONS": {"v1": {}, "v2": {}}},
}}
SECRETS = ("hunter2-secret", "pw-in-url")


def ready(gw: Gateway) -> Gateway:
    gw.wait_ready(60)
    for name in ("echo", "clf@v1", "clf@v2"):
        gw.wait_state(name, "READY", timeout=60)
    return gw


def audit_lines(gw: Gateway) -> list[dict]:
    text = (gw.workdir / "_cache" / "audit.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line]


def test_every_state_change_is_one_record_and_refusals_are_counted(gateways: GatewayPool) -> None:
    gw = ready(gateways(CONFIG))
    calls: list[tuple[str, int, str]] = []  # path, status, request id

    def post(path: str, body: dict, expect: int) -> dict:
        resp = gw.post(path, body)
        assert resp.status_code == expect, resp.text
        calls.append((path, resp.status_code, resp.headers["X-Request-ID"]))
        return resp.json()

    post("/start_server", {"SIGNATURE": "spare"}, 200)
    gw.wait_state("spare", "READY", timeout=60)
    post("/update_workers", {"SIGNATURE": "spare", "NR_WORKERS": 2}, 200)
    post("/reload_server", {"SIGNATURE": "echo"}, 200)
    post("/kill_server", {"SIGNATURE": "spare"}, 200)
    post("/traffic", {"SIGNATURE": "clf", "WEIGHTS": {"v1": 50, "v2": 50}}, 200)
    post("/rollout", {"SIGNATURE": "clf", "CANARY": "v2", "STEPS": [10, 100], "DWELL_S": 60,
                      "MIN_REQUESTS": 1000}, 200)
    post("/rollout/abort", {"SIGNATURE": "clf", "REASON": "audit test"}, 200)
    post("/rollout/promote", {"SIGNATURE": "clf", "REASON": "none running"}, 409)
    key = post("/keys", {"TENANT": "acme"}, 201)
    rotated = post("/keys/rotate", {"KEY_ID": key["KEY_ID"], "GRACE": 0}, 201)
    post("/keys/revoke", {"KEY_ID": rotated["KEY_ID"]}, 200)
    post("/jobs/requeue", {"SIGNATURE": "echo"}, 200)
    # Refused by validation, after the token: recorded, its secrets masked.
    post("/keys", {"TENANT": "acme", "ADMIN_TOKEN": SECRETS[0],
                   "NAME": f"redis://u:{SECRETS[1]}@h/0"}, 400)
    # Reads are not recorded.
    assert gw.get("/list_servers").status_code == 200
    assert gw.get("/traffic").status_code == 200

    history = gw.get("/history?audit=100").json()["audit"]
    made = [r for r in history if r["kind"] == "admin_call"]
    assert [(r["path"], r["status"], r["request_id"]) for r in made] == calls
    assert {r["path"] for r in made} == {r.path for r in ROUTES if r.changes} - {"/shutdown"}
    for record in made:
        assert record["method"] == "POST"
        assert record["who"] == {"credential": "admin_token", "token_id": token_id(ADMIN_TOKEN),
                                 "address": "127.0.0.1"}
    assert made[0]["args"] == {"SIGNATURE": "spare"}
    assert made[7]["error_type"] == "conflict" and made[0]["error_type"] is None
    assert made[-1]["args"]["ADMIN_TOKEN"] == "***"
    assert made[-1]["args"]["NAME"] == "redis://u:***@h/0"
    assert [r["ts"] for r in made] == sorted(r["ts"] for r in made)

    # Refused attempts: no token, a wrong one, a Host not answered to; on commands, the
    # dashboard's stream and /metrics.
    for i in range(40):
        assert gw.post("/kill_server", {"SIGNATURE": "echo"},
                       token=None if i % 2 else "wrong").status_code == 401
    for _ in range(3):
        assert gw.get("/dashboard/events", token=None).status_code == 401
    for _ in range(5):
        assert gw.get("/metrics", token="wrong").status_code == 401
    assert gw.post("/kill_server", {"SIGNATURE": "echo"},
                   headers={"Host": "attacker.example"}).status_code == 403
    assert gw.servers()["SERVERS"]["echo"]["state"] == "READY"

    resp = gw.post("/shutdown", SHUTDOWN_CMD)
    assert resp.status_code == 200
    calls.append(("/shutdown", 200, resp.headers["X-Request-ID"]))
    try:
        gw.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the gateway did not exit\n{gw.log_tail()}")

    records = audit_lines(gw)
    assert [(r["path"], r["status"], r["request_id"])
            for r in records if r["kind"] == "admin_call"] == calls
    refused = [r for r in records if r["kind"] == "admin_refused"]
    assert {r["address"] for r in refused} == {"127.0.0.1"}
    assert sum(r["count"] for r in refused) == 40 + 3 + 5 + 1
    # One record per front process and minute at most (the calls may straddle a minute).
    assert len(refused) <= CONFIG["GATEWAY_WORKERS"] * 2
    assert {p for r in refused for p in r["paths"]} == {"/kill_server", "/dashboard/events",
                                                        "/metrics"}
    text = (gw.workdir / "_cache" / "audit.jsonl").read_text()
    for secret in (*SECRETS, ADMIN_TOKEN, key["KEY"], rotated["KEY"]):
        assert secret not in text
    assert "hunter2" not in gw.log_text()
