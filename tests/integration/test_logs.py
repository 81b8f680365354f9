"""Logs: one access line per /run, JSON on request, model loading timed."""

from __future__ import annotations

import json
import re

from tests.conftest import assert_error, assert_ok, gateway_env, wait_until

CONFIG = {"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}}}


def test_access_lines_and_timed_model_loading(gateways):
    gw = gateways(CONFIG)
    for _ in range(3):
        assert_ok(gw.run("echo"))
    assert_error(gw.run("nope"), 404)
    pattern = re.compile(r"bis\.access: echo 200 [0-9.]+ ms worker g\d+w0")
    lines = wait_until(lambda: len(found := pattern.findall(gw.log_text())) == 3 and found,
                       timeout=5, message="three access lines for echo")
    assert len(lines) == 3
    assert re.search(r"echo worker 0: model loaded in [0-9.]+ s", gw.log_text())


def test_json_logs_carry_the_access_fields(gateways):
    gw = gateways(CONFIG, env=gateway_env(BIS_LOG_JSON="1"))
    assert_ok(gw.run("echo"))

    def access_entries():
        entries = []
        for line in gw.log_text().splitlines():
            if line.startswith("{") and '"bis.access"' in line:
                entries.append(json.loads(line))
        return entries

    [entry] = wait_until(access_entries, timeout=5, message="a JSON access line")
    assert entry["endpoint"] == "echo" and entry["status"] == 200
    assert entry["latency_ms"] > 0 and entry["worker"].endswith("w0") and entry["level"] == "INFO"


def test_access_log_can_be_turned_off(gateways):
    gw = gateways({**CONFIG, "ACCESS_LOG": False})
    assert_ok(gw.run("echo"))
    assert_ok(gw.run("echo"))
    assert "bis.access" not in gw.log_text()
