"""The _warmup hook: it runs once before the worker is READY, and its failure fails the
start as a failed _load_model does."""

from __future__ import annotations

from tests.conftest import assert_ok, wait_until


def test_warmup_runs_before_the_first_request_and_a_failing_one_fails_the_start(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {
        "warm": {"SERVER_CLASS": "warmup"},
        "cold": {"SERVER_CLASS": "warmup", "WARMUP_FAILS": True}}}, wait=None)
    wait_until(lambda: gw.state("warm") == "READY", timeout=30, message="warm is READY")
    assert assert_ok(gw.run("warm"))["calls"] == ["warmup", "request"]
    assert assert_ok(gw.run("warm"))["calls"] == ["warmup", "request", "request"]
    assert "warm worker 0: warmed up in" in gw.log_text()

    def failed():
        info = gw.server("cold")
        return info["state"] in ("FAILED", "CRASHLOOP") and info["last_error"] and info

    cold = wait_until(failed, timeout=60, message="cold's start failed")
    assert "RuntimeError: warm-up inference failed" in cold["last_error"], cold
