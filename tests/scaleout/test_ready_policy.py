"""READY_POLICY: which endpoints /health/ready waits for (a pod's readiness probe)."""

from __future__ import annotations

import pytest

from basic_inference_server.config import parse_config
from basic_inference_server.errors import ConfigError
from basic_inference_server.gateway.readiness import waiting_for
from tests.conftest import assert_ok

STATES = {"a": "READY", "b": "CRASHLOOP", "c": "STOPPED"}


@pytest.mark.parametrize(("policy", "waiting"), [
    ("all", {"b": "CRASHLOOP"}),
    ("any", {}),
    (["a"], {}),
    (["a", "b"], {"b": "CRASHLOOP"}),
    (["nope"], {"nope": "UNKNOWN"}),
])
def test_policy_verdicts(policy, waiting):
    assert waiting_for(STATES, policy) == waiting


def test_any_needs_one_ready_endpoint_when_some_started():
    assert waiting_for({"a": "STARTING", "b": "FAILED"}, "any") == {"a": "STARTING", "b": "FAILED"}
    assert waiting_for({"a": "STOPPED"}, "any") == {}
    assert waiting_for({}, "all") == {}


@pytest.mark.parametrize("bad", ["some", [], [1], ["ok", ""], 3])
def test_bad_policies_are_config_errors(bad):
    with pytest.raises(ConfigError, match="READY_POLICY"):
        parse_config({"READY_POLICY": bad})


@pytest.mark.slow
def test_a_crashlooping_endpoint_keeps_the_box_ready_under_any(gateways):
    endpoints = {"echo": {}, "broken_load": {}}
    strict = gateways({"CONFIG_ENDPOINTS": endpoints}, wait="settled")
    lenient = gateways({"READY_POLICY": "any", "CONFIG_ENDPOINTS": endpoints}, wait="settled")
    named = gateways({"READY_POLICY": ["broken_load"], "CONFIG_ENDPOINTS": endpoints},
                     wait="settled")
    for gw in (strict, lenient, named):
        gw.wait_state("echo", "READY")
        gw.wait_state("broken_load", ("FAILED", "CRASHLOOP"))
    resp = strict.get("/health/ready")
    assert resp.status_code == 503 and resp.headers["Retry-After"]
    # It keeps failing and being retried: any state but READY.
    assert resp.json()["endpoints"]["broken_load"] != "READY"
    assert assert_ok(lenient.get("/health/ready"))["status"] == "ready"
    resp = named.get("/health/ready")
    assert resp.status_code == 503 and resp.json()["status"] == "not ready"
