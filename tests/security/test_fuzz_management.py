"""Every management command, fed generated invalid or random bodies, never breaks the tree.

Hypothesis sends each command straight to the manager's control socket (where the
front forwards it, so the front's own checks do not hide anything) and through HTTP.
Bounded: a fixed number of examples, small worker counts, and the bodies that would
legitimately stop something are left out (a valid /shutdown or /kill_server, a reload
or a hang report of a running endpoint). Afterwards the manager, the front, the
supervisor and the endpoint server are the same processes, and they still serve.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from basic_inference_server.control_api import COMMANDS as TABLE
from tests.conftest import assert_ok
from tests.security.manager_socket import control_raw, core_pids

COMMANDS = sorted(TABLE)
ENDPOINT = "echo"
KEYS = ["SIGNATURE", "NR_WORKERS", "HOST", "PORT", "SERVER_CLASS", "TIMEOUT", "DISABLED",
        "PING_INTERVAL", "MODELS", "GPUS", "generation", "pids", "server", "reason", "samples",
        "system", "gpu", "trees", "taken_at", "JOB_ID", "__peer_addr__", "__peer_port__"]

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
           | st.sampled_from(["echo", "echo\n", "../../tmp/x", "/etc/passwd", "a\u0000b",
                              "é" * 70, "NO_HOST", "127.0.0.1", "::", "SAFE_KILL_SERVER_CMD"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def small_workers(body: dict[str, Any]) -> dict[str, Any]:
    """Worker counts stay small: a valid one really starts that many processes."""
    count = body.get("NR_WORKERS")
    if type(count) is int and count > 2:
        return {**body, "NR_WORKERS": 2}
    return body


bodies = (st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=12), values, max_size=5)
          .map(small_workers) | values)
BEFORE: dict[str, Any] = {}


def stable_pids(gw) -> dict[str, Any]:
    """Manager, front, supervisor and each endpoint's server (workers may be rescaled)."""
    return {k: v[0] if isinstance(v, tuple) else v for k, v in core_pids(gw).items()}


def stops_something(cmd: str, body: Any) -> bool:
    """Bodies that would legitimately stop or replace a process: not what this test is about."""
    if cmd == "shutdown":
        return True  # the manager acts on any body; the front's check is tested over HTTP
    if not isinstance(body, dict):
        return False
    if cmd in ("kill_server", "reload_server") and body.get("SIGNATURE") == ENDPOINT:
        return True
    return cmd == "report_hung" and body.get("SIGNATURE") == ENDPOINT


@pytest.fixture(scope="module")
def gw(module_gateways):
    gw = module_gateways({"HEALTH_SAMPLE_INTERVAL": 1, "CONFIG_ENDPOINTS": {ENDPOINT: {}}})
    gw.wait_settled()
    BEFORE.update(stable_pids(gw))
    return gw


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(cmd=st.sampled_from(COMMANDS), body=bodies, raw_args=st.booleans())
def test_fuzz_control_socket(gw, cmd, body, raw_args):
    if stops_something(cmd, body):
        return
    request = {"cmd": cmd, "args": body} if raw_args else {"cmd": cmd, "args": body, "x": body}
    try:
        data = json.dumps(request).encode() + b"\n"
    except (ValueError, TypeError):
        return
    reply = control_raw(gw, data)
    assert reply is not None, f"no reply to {cmd}"
    assert isinstance(reply["status"], int)
    if reply["status"] >= 400:
        assert reply["body"]["ERROR"] and reply["body"]["ERROR_TYPE"], reply
    assert gw.proc.poll() is None, gw.log_tail()


HTTP_COMMANDS = ["start_server", "kill_server", "update_workers", "reload_server", "shutdown",
                 "support_update_status", "list_servers", "system_status", "notifications"]


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(cmd=st.sampled_from(HTTP_COMMANDS), body=bodies)
def test_fuzz_http(gw, cmd, body):
    if isinstance(body, dict) and body.get("SIGNATURE") in (ENDPOINT, "SAFE_KILL_SERVER_CMD") \
            and cmd in ("kill_server", "reload_server", "shutdown"):
        return
    try:
        resp = gw.post(f"/{cmd}", body)
    except ValueError:
        return  # not JSON-encodable (NaN): requests refuses it
    assert resp.headers["Content-Type"].startswith("application/json"), resp.text[:300]
    if resp.status_code >= 400:
        assert resp.json()["ERROR"], resp.text[:300]
    assert resp.status_code < 500 or resp.json().get("ERROR_TYPE"), resp.text[:300]
    assert gw.proc.poll() is None, gw.log_tail()


def test_the_tree_is_the_same_and_serves_after_the_fuzz(gw):
    """Runs last in this module: the processes seen before the fuzz are still the tree."""
    after = stable_pids(gw)
    assert BEFORE and {k: after.get(k) for k in BEFORE} == BEFORE, (BEFORE, after)
    assert_ok(gw.run(ENDPOINT, A=1))
    assert gw.get("/health/live").status_code == 200
