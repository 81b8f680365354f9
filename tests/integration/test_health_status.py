"""/system_status: GPU section, alerts, and a history of state changes kept across restarts."""

from __future__ import annotations

import os
import signal

from tests.conftest import assert_ok, spawn_gateway, wait_until, with_test_defaults

CONFIG = {"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}}}


def events(gw):
    return assert_ok(gw.get("/system_status"))["HISTORY"]["events"]


def test_status_reports_gpu_alerts_and_history_across_restarts(gateways):
    gw = gateways(CONFIG)
    body = assert_ok(gw.get("/system_status"))
    gpu = body["SYSTEM_STATUS"]["gpu"]
    # This box has no GPU: the answer says so plainly instead of failing.
    assert gpu["available"] is False and gpu["reason"].startswith("no GPU") and gpu["gpus"] == []
    assert isinstance(body["SYSTEM_ALERTS"], list)
    assert body["SYSTEM_STATUS"]["system"]["mem_total_gb"] > 0
    assert [e["kind"] for e in body["HISTORY"]["events"]] == ["startup"]

    master = gw.server("echo")["pid"]
    os.kill(master, signal.SIGKILL)
    exits = wait_until(lambda: [e for e in events(gw) if e["kind"] == "server_exit"], timeout=15,
                       message="the killed server is recorded")
    assert exits[0]["endpoint"] == "echo" and exits[0]["exit_code"] == -signal.SIGKILL
    wait_until(lambda: gw.server("echo")["state"] == "READY", timeout=15)
    assert assert_ok(gw.post("/shutdown", {"SIGNATURE": "SAFE_KILL_SERVER_CMD"}))
    assert gw.proc.wait(timeout=20) == 0

    # A new gateway in the same folder (same _cache/) still has the story.
    again = spawn_gateway(gw.workdir, with_test_defaults(CONFIG), endpoints=gw.endpoints_dir)
    gateways.started.append(again)
    again.wait_ready(30)
    kinds = [e["kind"] for e in events(again)]
    assert kinds[:4] == ["startup", "server_exit", "shutdown", "startup"], kinds
