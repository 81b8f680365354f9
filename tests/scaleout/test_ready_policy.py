"""READY_POLICY: which endpoints /health/ready waits for (a pod's readiness probe)."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from basic_inference_server.config import parse_config
from basic_inference_server.contracts import RouteSnapshot
from basic_inference_server.errors import ConfigError
from basic_inference_server.gateway.readiness import table_waiting, waiting_for
from tests.conftest import FIXTURE_ENDPOINTS, assert_ok, wait_until, write_endpoint

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


def test_a_front_that_never_read_the_route_table_is_not_ready():
    # The empty table a front holds before its first read is not "no endpoint started".
    assert table_waiting(RouteSnapshot()) == {"route table": "UNREAD"}
    assert table_waiting(RouteSnapshot(written_at=1.0)) == {}


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


# Loads only once the test creates the file named by GATE: the test decides when it is READY.
GATED = '''
import time
from pathlib import Path

from basic_inference_server import FlaskWorker

_CONFIG = {"GATE": ""}


class GatedWorker(FlaskWorker):
    def _load_model(self):
        deadline = time.monotonic() + 60
        while not Path(self.cfg_gate).exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the test never opened the gate")
            time.sleep(0.02)

    def _pre_process(self, inputs):
        return inputs

    def _predict(self, prep_inputs):
        return "loaded"

    def _post_process(self, pred):
        return {"status": pred}
'''


# Probes at once: the front answers each in a thread of its own, as an orchestrator's and
# a load balancer's probes arrive together.
POLLERS = 4


def poll_ready(gw, answers: list, until) -> None:
    """GET /health/ready from POLLERS threads, from the gateway's first answer on, each
    answer kept, until ``until(answers)``; a front not listening yet is not an answer."""
    done = threading.Event()

    def polled():
        if done.is_set():
            return True
        gw._check_alive()
        resp = gw.get("/health/ready", timeout=2)
        answers.append((resp.status_code, resp.json()["endpoints"]))
        if until(answers):
            done.set()
        return done.is_set()

    with ThreadPoolExecutor(POLLERS) as pool:
        for probe in [pool.submit(wait_until, polled, timeout=60, interval=0.01,
                                  message="/health/ready answers as expected")
                      for _ in range(POLLERS)]:
            probe.result()


# No answer may come from a table that names no endpoint (a probe that raced the front's
# first read of the route table got 200 so), nor count an endpoint not started yet as an
# idle STOPPED one.
@pytest.mark.parametrize("policy", ["all", ["gated"]])
def test_ready_waits_from_the_first_answer_for_every_endpoint_the_policy_names(
        gateways, tmp_path, policy):
    endpoints = tmp_path / "endpoints"
    shutil.copytree(FIXTURE_ENDPOINTS, endpoints, ignore=shutil.ignore_patterns("__pycache__"))
    write_endpoint(endpoints, "gated", GATED)
    gate = tmp_path / "gate"
    configured = {"echo": {}, "gated": {"GATE": str(gate)},
                  "echo_then_gated": {"PIPELINE": {"STEPS": [
                      {"ID": "a", "SIGNATURE": "echo", "INPUT": {}},
                      {"ID": "b", "SIGNATURE": "gated", "INPUT": {}}]}},
                  "off": {"DISABLED": True}}
    gw = gateways({"READY_POLICY": policy, "CONFIG_ENDPOINTS": configured}, wait=None,
                  endpoints=endpoints)
    answers: list[tuple[int, dict]] = []
    # Up to the moment the fast endpoints are READY and the gated one still loads.
    poll_ready(gw, answers, lambda a: a[-1][1].get("echo") == "READY")
    assert gw.state("gated") == "STARTING"
    gate.touch()
    poll_ready(gw, answers, lambda a: a[-1][0] == 200)
    assert gw.state("gated") == "READY"
    # From the first answer on, the front knows every configured endpoint, and 200 means
    # each enabled one READY; no answer is 200 before the gated endpoint is READY.
    for status, states in answers:
        assert set(states) == {"echo", "gated", "echo_then_gated", "off"}, (status, states)
        assert states["off"] == "STOPPED"
        if status == 200:
            assert {s for n, s in states.items() if n != "off"} == {"READY"}, states
    opened = next(i for i, (_, states) in enumerate(answers) if states["gated"] == "READY")
    assert [status for status, _ in answers[:opened]] == [503] * opened
    assert gw.run("echo_then_gated").status_code == 200
